// Exact assignment and exact optimal transport on dense costs (issue 16).
//
// lsa_solve:  linear sum assignment, Jonker-Volgenant style. Square problems start with JV's
//             column reduction, reduction transfer and two passes of augmenting row reduction;
//             rectangular ones (rows < cols) start from a greedy row-minimum matching with v = 0,
//             which keeps the never-matched columns at v = 0 as the rectangular dual needs. The
//             remaining free rows are matched by Dijkstra shortest augmenting paths.
// emd_solve:  the transportation problem (POT's ot.emd) by a primal network simplex (see the
//             Simplex struct below). A successive-shortest-path solver over the same SIMD
//             Dijkstra was tried first and measured 8x slower than POT at n = m = 1000: most of
//             its paths ended on an emptied reverse arc and the next search re-explored the tree.
//
// The assignment Dijkstra spends its time in one kernel, relax_row: for one scanned row i, over
// the contiguous cost row, d[k] = min(d[k], c_ik - vb[k] - h) with pred[k] = i where it
// improved, and the minimum of d in the same pass. Finalized columns are taken out of the scan
// without a branch: their d is +inf and vb = -inf, so c - vb = +inf never improves them and
// never wins the minimum (vb is restored to v when the search ends). The pass is 8 doubles at a
// time (zmm on AVX-512 hosts); float32 costs are widened on load, so every problem is solved in
// float64 arithmetic without an n x m float64 copy. maximize negates on load (no copy either).
//
// Batched problems (B, n, m) are handed to the threads one at a time (for_each_problem); errors
// are recorded per problem and raised after the parallel region (ValueError, scipy's wording).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "simd.h"

namespace hotpath {
namespace {

using simd::vf64;
using simd::vi64;
constexpr int W = 8;
constexpr double kInf = std::numeric_limits<double>::infinity();

typedef float vf32x8 __attribute__((vector_size(32), aligned(32)));

template <typename T> struct Wide;
template <> struct Wide<double> {
  static inline vf64 load(const double* p) { vf64 v; std::memcpy(&v, p, sizeof(v)); return v; }
};
template <> struct Wide<float> {
  static inline vf64 load(const float* p) {
    vf32x8 v;
    std::memcpy(&v, p, sizeof(v));
    return __builtin_convertvector(v, vf64);
  }
};

inline vf64 ld(const double* p) { vf64 v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void st(double* p, vf64 v) { std::memcpy(p, &v, sizeof(v)); }
inline vi64 ldi(const int64_t* p) { vi64 v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void sti(int64_t* p, vi64 v) { std::memcpy(p, &v, sizeof(v)); }
inline vf64 splat(double a) { return vf64{} + a; }
inline double hmin(vf64 v) {
  double s = v[0];
  for (int l = 1; l < W; ++l) s = v[l] < s ? v[l] : s;
  return s;
}

// Dijkstra state over the columns of one assignment problem (padded to a multiple of W: padding
// columns have d = +inf and vb = -inf, so they never improve and never win).
struct ColumnSearch {
  int m = 0, mp = 0;
  std::vector<double> v, vb, d, dfin;
  std::vector<int64_t> pred;
  std::vector<int> scanned;

  void init(int m_) {
    m = m_;
    mp = (m + W - 1) / W * W;
    v.assign(mp, 0.0);
    vb.assign(mp, -kInf);
    d.assign(mp, kInf);
    dfin.assign(mp, 0.0);
    pred.assign(mp, -1);
    scanned.clear();
    scanned.reserve(m);
  }
  void reset_d() { std::fill(d.begin(), d.end(), kInf); }
  void sync_vb() { std::memcpy(vb.data(), v.data(), sizeof(double) * m); }

  // d[k] = min(d[k], s*c_ik - vb[k] - h), pred[k] = i where improved; returns min_k d[k].
  template <typename T, bool NEG>
  double relax_row(const T* row, int64_t i, double h) {
    const vf64 hv = splat(h);
    const vi64 iv = vi64{} + i;
    vf64 mn = splat(kInf);
    int k = 0;
    for (; k + W <= m; k += W) {
      vf64 c = Wide<T>::load(row + k);
      if (NEG) c = -c;
      const vf64 cr = (c - ld(&vb[k])) - hv;
      vf64 dk = ld(&d[k]);
      const vi64 better = cr < dk;
      dk = better ? cr : dk;
      st(&d[k], dk);
      sti(&pred[k], better ? iv : ldi(&pred[k]));
      mn = mn < dk ? mn : dk;
    }
    double best = hmin(mn);
    for (; k < m; ++k) {
      double c = (double)row[k];
      if (NEG) c = -c;
      const double cr = (c - vb[k]) - h;
      if (cr < d[k]) { d[k] = cr; pred[k] = i; }
      best = d[k] < best ? d[k] : best;
    }
    return best;
  }

  // A column with d == mu, preferring one for which good(k) holds (it ends the search).
  template <typename Good>
  int find(double mu, Good good) const {
    int first = -1;
#if defined(__AVX512F__)
    const __m512d mv = _mm512_set1_pd(mu);
    for (int k = 0; k < mp; k += W) {
      unsigned eq = _mm512_cmp_pd_mask(_mm512_loadu_pd(&d[k]), mv, _CMP_EQ_OQ);
      while (eq) {
        const int j = k + __builtin_ctz(eq);
        eq &= eq - 1;
        if (good(j)) return j;
        if (first < 0) first = j;
      }
    }
#else
    const vf64 mv = splat(mu);
    for (int k = 0; k < mp; k += W) {
      const vi64 eq = ld(&d[k]) == mv;
      int64_t any = 0;
      for (int l = 0; l < W; ++l) any |= eq[l];
      if (!any) continue;
      for (int l = 0; l < W; ++l) {
        if (!eq[l]) continue;
        const int j = k + l;
        if (good(j)) return j;
        if (first < 0) first = j;
      }
    }
#endif
    return first;
  }

  void finalize(int j, double mu) {
    scanned.push_back(j);
    dfin[j] = mu;
    d[j] = kInf;
    vb[j] = -kInf;
  }
};

// The two smallest of s*r[k] - v[k] over k < m, lowest index first among equal values
// (per-lane minima, then a merge of the 2W lane candidates). j1 = -1 when all are +inf.
template <typename T, bool NEG>
void two_smallest(const T* r, const double* v, int m, double& u1, int& j1, double& u2, int& j2) {
  vf64 m1 = splat(kInf), m2 = splat(kInf);
  vi64 i1 = vi64{} - 1, i2 = vi64{} - 1;
  vi64 kk = vi64{0, 1, 2, 3, 4, 5, 6, 7};
  int k = 0;
  for (; k + W <= m; k += W, kk += W) {
    vf64 c = Wide<T>::load(r + k);
    if (NEG) c = -c;
    const vf64 h = c - ld(v + k);
    const vi64 lt1 = h < m1, lt2 = h < m2;
    m2 = lt1 ? m1 : (lt2 ? h : m2);
    i2 = lt1 ? i1 : (lt2 ? kk : i2);
    m1 = lt1 ? h : m1;
    i1 = lt1 ? kk : i1;
  }
  u1 = u2 = kInf;
  j1 = j2 = -1;
  auto push = [&](double h, int j) {
    if (j < 0) return;
    if (h < u1 || (h == u1 && j < j1)) { u2 = u1; j2 = j1; u1 = h; j1 = j; }
    else if (h < u2 || (h == u2 && (j2 < 0 || j < j2))) { u2 = h; j2 = j; }
  };
  for (int l = 0; l < W; ++l) { push(m1[l], (int)i1[l]); push(m2[l], (int)i2[l]); }
  for (; k < m; ++k) {
    double c = (double)r[k];
    if (NEG) c = -c;
    push(c - v[k], k);
  }
  if (j1 >= 0 && !(u1 < kInf)) j1 = j2 = -1;
  if (j2 >= 0 && !(u2 < kInf)) j2 = -1;
}

// Run body(b) for b < B: problems are handed out one at a time (their solve times vary, and a
// thread that the OS parks for a while must not hold back a fixed share of the batch); one
// worker runs inline, without a parallel region (whose barrier costs more than a small solve).
template <typename Body>
void for_each_problem(int64_t B, const Body& body) {
  const int64_t workers = std::min<int64_t>(B, at::get_num_threads());
  if (workers <= 1) {
    for (int64_t b = 0; b < B; ++b) body(b);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t b; (b = next.fetch_add(1)) < B;) body(b);
  });
}

// --------------------------------------------------------------------------------- assignment
enum Status : int { kOk = 0, kInvalid = 1, kInfeasible = 2 };

template <typename T, bool NEG>
struct Lsa {
  const T* C;
  int64_t ldc;
  int n, m;  // n <= m
  ColumnSearch cs;
  std::vector<int> x, y;  // row -> column, column -> row

  inline const T* row(int i) const { return C + (int64_t)i * ldc; }
  inline double cost(int i, int j) const { const double c = (double)row(i)[j]; return NEG ? -c : c; }

  // two smallest of c_ij - v_j over j (indices j1, j2; j2 = -1 when m == 1)
  void two_min(int i, double& u1, int& j1, double& u2, int& j2) const {
    two_smallest<T, NEG>(row(i), cs.v.data(), m, u1, j1, u2, j2);
  }

  bool square_init(std::vector<int>& free_rows) {
    std::vector<double> colmin(cs.mp, kInf);
    std::vector<int64_t> arg(cs.mp, -1);
    for (int i = 0; i < n; ++i) {  // column minima by contiguous row passes
      const T* r = row(i);
      const vi64 iv = vi64{} + (int64_t)i;
      int k = 0;
      for (; k + W <= m; k += W) {
        vf64 c = Wide<T>::load(r + k);
        if (NEG) c = -c;
        const vf64 cm = ld(&colmin[k]);
        const vi64 lt = c < cm;
        st(&colmin[k], lt ? c : cm);
        sti(&arg[k], lt ? iv : ldi(&arg[k]));
      }
      for (; k < m; ++k) {
        const double c = cost(i, k);
        if (c < colmin[k]) { colmin[k] = c; arg[k] = i; }
      }
    }
    std::vector<int> matches(n, 0);
    for (int j = m - 1; j >= 0; --j) {
      if (!(colmin[j] < kInf)) return false;  // a column with no allowed row
      cs.v[j] = colmin[j];
      const int i = (int)arg[j];
      if (matches[i]++ == 0) { x[i] = j; y[j] = i; }
    }
    // reduction transfer: a row matched once may lower its column's price to its second best
    for (int i = 0; i < n; ++i) {
      if (matches[i] == 0) { free_rows.push_back(i); continue; }
      if (matches[i] != 1) continue;
      const int j1 = x[i];
      double a1, a2;
      int k1, k2;
      two_min(i, a1, k1, a2, k2);
      const double mn = k1 == j1 ? a2 : a1;  // cheapest alternative to j1 (a1 == a2 on ties)
      if (mn < kInf) cs.v[j1] -= mn;
    }
    // augmenting row reduction, two passes; re-processing a displaced row is bounded
    for (int pass = 0; pass < 2 && !free_rows.empty(); ++pass) {
      std::vector<int> next;
      size_t k = 0;
      // displaced rows re-enter at once only this often: ARR can cycle among near-equal prices,
      // and past about n re-entries the shortest paths below are the cheaper way to finish
      int64_t budget = n;
      while (k < free_rows.size()) {
        const int i = free_rows[k++];
        double u1, u2;
        int j1, j2;
        two_min(i, u1, j1, u2, j2);
        if (j1 < 0) return false;  // a row with no allowed column
        int i0 = y[j1];
        bool lowered = false;
        if (u1 < u2 && u2 < kInf) {
          cs.v[j1] -= u2 - u1;
          lowered = true;
        } else if (i0 >= 0 && j2 >= 0 && u2 < kInf) {
          j1 = j2;
          i0 = y[j2];
        }
        if (i0 >= 0) {
          x[i0] = -1;
          if (lowered && budget-- > 0) free_rows[--k] = i0;
          else next.push_back(i0);
        }
        x[i] = j1;
        y[j1] = i;
      }
      free_rows.swap(next);
    }
    return true;
  }

  bool rect_init(std::vector<int>& free_rows) {
    for (int i = 0; i < n; ++i) {
      double u1, u2;
      int jb, j2;
      two_min(i, u1, jb, u2, j2);  // v = 0 here
      if (jb < 0) return false;
      if (y[jb] < 0) { x[i] = jb; y[jb] = i; }
      else free_rows.push_back(i);
    }
    return true;
  }

  bool augment(int f) {
    cs.reset_d();
    cs.scanned.clear();
    double mu = cs.relax_row<T, NEG>(row(f), f, 0.0);
    int sink = -1;
    while (true) {
      if (!(mu < kInf)) return false;
      const int j = cs.find(mu, [this](int k) { return y[k] < 0; });
      if (y[j] < 0) { sink = j; break; }
      cs.finalize(j, mu);
      const int i = y[j];
      const double h = cost(i, j) - cs.v[j] - mu;
      mu = cs.relax_row<T, NEG>(row(i), i, h);
    }
    for (int j : cs.scanned) { cs.v[j] += cs.dfin[j] - mu; cs.vb[j] = cs.v[j]; }
    int j = sink;
    while (true) {
      const int i = (int)cs.pred[j];
      y[j] = i;
      const int nxt = x[i];
      x[i] = j;
      if (i == f) break;
      j = nxt;
    }
    return true;
  }

  int solve() {
    cs.init(m);
    x.assign(n, -1);
    y.assign(m, -1);
    std::vector<int> free_rows;
    const bool ok = n == m ? square_init(free_rows) : rect_init(free_rows);
    if (!ok) return kInfeasible;
    cs.sync_vb();
    for (int f : free_rows)
      if (!augment(f)) return kInfeasible;
    return kOk;
  }
};

template <typename T>
int check_entries(const T* C, int64_t count, bool maximize) {
  // scipy: NaN is invalid, and so is the infinity that would be "free" (-inf when minimizing)
  const double bad = maximize ? kInf : -kInf;
  const vf64 bv = splat(bad);
  vi64 flag = vi64{};
  int64_t k = 0;
  for (; k + W <= count; k += W) {
    const vf64 c = Wide<T>::load(C + k);
    flag |= (c != c) | (c == bv);
  }
  int64_t any = 0;
  for (int l = 0; l < W; ++l) any |= flag[l];
  for (; k < count; ++k) {
    const double c = (double)C[k];
    any |= (c != c) || c == bad;
  }
  return any ? kInvalid : kOk;
}

template <typename T, bool NEG>
int lsa_one(const T* C, int n, int m, int64_t* rows, int64_t* cols, std::vector<T>& tbuf) {
  const T* A = C;
  int nr = n, nc = m;
  if (n > m) {  // solve the transpose so the search runs over the longer, contiguous side
    tbuf.resize((size_t)n * m);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < m; ++j) tbuf[(size_t)j * n + i] = C[(size_t)i * m + j];
    A = tbuf.data();
    nr = m;
    nc = n;
  }
  Lsa<T, NEG> s{A, nc, nr, nc, {}, {}, {}};
  const int st = s.solve();
  if (st != kOk) return st;
  if (n <= m) {
    for (int i = 0; i < n; ++i) { rows[i] = i; cols[i] = s.x[i]; }
  } else {
    std::vector<int> col_of_row(n, -1);
    for (int j = 0; j < m; ++j) col_of_row[s.x[j]] = j;
    int k = 0;
    for (int i = 0; i < n; ++i)
      if (col_of_row[i] >= 0) { rows[k] = i; cols[k] = col_of_row[i]; ++k; }
  }
  return kOk;
}

std::tuple<at::Tensor, at::Tensor> lsa_solve_cpu(const at::Tensor& C_in, bool maximize) {
  TORCH_CHECK_VALUE(C_in.dim() == 3, "lsa_solve: C must be (B, n, m), got ", C_in.sizes());
  TORCH_CHECK_TYPE(C_in.scalar_type() == at::kFloat || C_in.scalar_type() == at::kDouble,
                   "lsa_solve: C must be float32 or float64, got ", C_in.scalar_type());
  TORCH_CHECK_VALUE(C_in.size(1) < (1LL << 30) && C_in.size(2) < (1LL << 30), "lsa_solve: C is too large");
  const at::Tensor C = C_in.contiguous();
  const int64_t B = C.size(0);
  const int n = (int)C.size(1), m = (int)C.size(2);
  const int k = std::min(n, m);
  auto opts = C.options().dtype(at::kLong);
  at::Tensor rows = at::empty({B, k}, opts), cols = at::empty({B, k}, opts);
  if (B == 0 || k == 0) return {rows, cols};
  std::vector<int> status(B, kOk);
  AT_DISPATCH_FLOATING_TYPES(C.scalar_type(), "lsa_solve", [&] {
    const scalar_t* pc = C.data_ptr<scalar_t>();
    int64_t* pr = rows.data_ptr<int64_t>();
    int64_t* pk = cols.data_ptr<int64_t>();
    for_each_problem(B, [&](int64_t b) {
      std::vector<scalar_t> tbuf;
      const scalar_t* Cb = pc + b * (int64_t)n * m;
      int st = check_entries(Cb, (int64_t)n * m, maximize);
      if (st == kOk)
        st = maximize ? lsa_one<scalar_t, true>(Cb, n, m, pr + b * k, pk + b * k, tbuf)
                      : lsa_one<scalar_t, false>(Cb, n, m, pr + b * k, pk + b * k, tbuf);
      status[b] = st;
    });
  });
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(status[b] != kInvalid, "matrix contains invalid numeric entries (problem ", b, ")");
    TORCH_CHECK_VALUE(status[b] != kInfeasible, "cost matrix is infeasible (problem ", b, ")");
  }
  return {rows, cols};
}

// ---------------------------------------------------------------------------------- transport
// Primal network simplex on the bipartite network rows -> columns (arc costs M_ij, no
// capacities), started from LEMON's artificial star (every node hangs from a root by an
// artificial arc: free for rows, a big cost for columns) and pivoting under the strongly
// feasible tree rule, which rules out cycling on the many degenerate pivots of transport
// problems. Pricing is a block search over whole cost rows: reduced costs M_ij + pi_i - pi_j
// of a row come from one SIMD pass (minimum and its index), rows taken round-robin.
// The tree is kept as parent / depth / sibling lists; a pivot walks the cycle up to the join
// node and re-hangs the cut-off subtree (depths and potentials updated over that subtree).
template <typename T>
struct Simplex {
  const T* C;
  int n, m, N, root;
  std::vector<int> parent, depth, first_child, next_sib, prev_sib;
  std::vector<char> up;        // tree arc of w points w -> parent[w] (else parent[w] -> w)
  std::vector<double> flow;    // flow on the tree arc of w
  std::vector<double> pi;      // node potentials; reduced cost of i -> j: M_ij + pi_i - pi_{n+j}
  std::vector<int> stack;

  void link(int w, int p) {
    parent[w] = p;
    prev_sib[w] = -1;
    next_sib[w] = first_child[p];
    if (first_child[p] >= 0) prev_sib[first_child[p]] = w;
    first_child[p] = w;
  }
  void unlink(int w) {
    const int p = parent[w];
    if (prev_sib[w] >= 0) next_sib[prev_sib[w]] = next_sib[w];
    else first_child[p] = next_sib[w];
    if (next_sib[w] >= 0) prev_sib[next_sib[w]] = prev_sib[w];
  }

  // most negative reduced cost of row i: returns it, column in *jbest (tree arcs excluded where
  // the minimum is one of them and below -tol)
  double price_row(int i, const double* pic, double tol, int* jbest) const {
    const T* r = C + (int64_t)i * m;
    const vf64 pv = splat(pi[i]);
    vf64 mn = splat(kInf);
    vi64 mi = vi64{} - 1;
    vi64 kk = vi64{0, 1, 2, 3, 4, 5, 6, 7};
    int k = 0;
    for (; k + W <= m; k += W, kk += W) {
      const vf64 rc = (Wide<T>::load(r + k) + pv) - ld(pic + k);
      const vi64 lt = rc < mn;
      mn = lt ? rc : mn;
      mi = lt ? kk : mi;
    }
    double best = kInf;
    int jb = -1;
    for (int l = 0; l < W; ++l)
      if (mn[l] < best || (mn[l] == best && mi[l] < jb)) { best = mn[l]; jb = (int)mi[l]; }
    for (; k < m; ++k) {
      const double rc = ((double)r[k] + pi[i]) - pic[k];
      if (rc < best) { best = rc; jb = k; }
    }
    if (jb >= 0 && best < -tol && is_tree_arc(i, jb)) {
      // a tree arc's reduced cost is 0 by construction: a negative one is rounding, and
      // pivoting on it would cycle on the spot; take the best of the other arcs instead
      best = kInf;
      const int j0 = jb;
      jb = -1;
      for (int j = 0; j < m; ++j) {
        const double rc = ((double)r[j] + pi[i]) - pic[j];
        if (j != j0 && rc < best && !is_tree_arc(i, j)) { best = rc; jb = j; }
      }
    }
    *jbest = jb;
    return best;
  }

  bool is_tree_arc(int i, int j) const { return parent[i] == n + j || parent[n + j] == i; }

  // Potentials from scratch along the tree (reduced cost 0 on every tree arc). Pivots shift
  // whole subtrees by sums that pass through the big-M artificial scale ((max|M| + 1) (n + m)),
  // so incremental potentials carry absolute errors of eps * big-M: with one huge entry that
  // reached 1e-4 and stopped the pricing early. Exact sums along tree paths only carry eps * M.
  void recompute_potentials(double art) {
    pi[root] = 0.0;
    depth[root] = 0;
    stack.clear();
    for (int c = first_child[root]; c >= 0; c = next_sib[c]) stack.push_back(c);
    while (!stack.empty()) {
      const int w = stack.back();
      stack.pop_back();
      const int p = parent[w];
      double c;
      if (p == root) c = up[w] ? 0.0 : art;  // arcs at the root are the artificial ones
      else c = (double)C[(int64_t)(w < n ? w : p) * m + ((w < n ? p : w) - n)];
      pi[w] = up[w] ? pi[p] - c : pi[p] + c;  // w -> p: c + pi_w - pi_p = 0; p -> w: c + pi_p - pi_w = 0
      depth[w] = depth[p] + 1;
      for (int k = first_child[w]; k >= 0; k = next_sib[k]) stack.push_back(k);
    }
  }

  // shift potentials and recompute depths over the subtree of x
  void refresh_subtree(int x, double shift) {
    stack.clear();
    stack.push_back(x);
    while (!stack.empty()) {
      const int w = stack.back();
      stack.pop_back();
      pi[w] += shift;
      depth[w] = depth[parent[w]] + 1;
      for (int c = first_child[w]; c >= 0; c = next_sib[c]) stack.push_back(c);
    }
  }

  bool pivot(int p, int q, double rc) {
    // join node
    int a = p, b = q;
    while (a != b) {
      if (depth[a] >= depth[b]) a = parent[a];
      else b = parent[b];
    }
    const int join = a;
    // leaving arc: the last blocking arc met going join -> p -> q -> join
    double theta = kInf;
    int leave = -1;
    bool leave_u_side = false;
    for (int w = p; w != join; w = parent[w])
      if (up[w] && flow[w] < theta) { theta = flow[w]; leave = w; leave_u_side = true; }
    for (int w = q; w != join; w = parent[w])
      if (!up[w] && flow[w] <= theta) { theta = flow[w]; leave = w; leave_u_side = false; }
    if (leave < 0) return false;  // no blocking arc: cannot happen with finite data; stop safely
    // push theta around the cycle
    if (theta > 0.0) {
      for (int w = p; w != join; w = parent[w]) flow[w] += up[w] ? -theta : theta;
      for (int w = q; w != join; w = parent[w]) flow[w] += up[w] ? theta : -theta;
    }
    // re-hang the subtree cut off by the leaving arc through the entering arc
    const int x = leave_u_side ? p : q;  // the entering arc's end inside that subtree
    const int y = leave_u_side ? q : p;
    char up_new = leave_u_side ? 1 : 0;  // p -> q: up when p is the child
    double flow_new = theta;
    int w = x, newpar = y;
    while (true) {
      const int old_par = parent[w];
      const char old_up = up[w];
      const double old_flow = flow[w];
      unlink(w);
      link(w, newpar);
      up[w] = up_new;
      flow[w] = flow_new;
      if (w == leave) break;
      // the old tree arc of w now hangs old_par below w, pointing the other way
      up_new = !old_up;
      flow_new = old_flow;
      newpar = w;
      w = old_par;
    }
    refresh_subtree(x, leave_u_side ? -rc : rc);
    return true;
  }

  int64_t solve(const double* a, const double* b, double* X, double* cost, double* uo, double* vo, int64_t max_iter) {
    N = n + m;
    root = N;
    parent.assign(N + 1, -1);
    depth.assign(N + 1, 0);
    first_child.assign(N + 1, -1);
    next_sib.assign(N + 1, -1);
    prev_sib.assign(N + 1, -1);
    up.assign(N + 1, 0);
    flow.assign(N + 1, 0.0);
    pi.assign(N + 1, 0.0);
    double cmax = 0.0, csum = 0.0;
    for (int64_t k = 0; k < (int64_t)n * m; ++k) {
      const double c = std::fabs((double)C[k]);
      cmax = std::max(cmax, c);
      csum += c;
    }
    const double art = (cmax + 1.0) * (double)N;
    for (int w = N - 1; w >= 0; --w) {
      link(w, root);
      depth[w] = 1;
      const double supply = w < n ? a[w] : -b[w - n];
      if (supply >= 0) { up[w] = 1; flow[w] = supply; pi[w] = 0.0; }
      else { up[w] = 0; flow[w] = -supply; pi[w] = art; }
    }
    // A pivot must gain more than the rounding of the potentials. While big-M potentials are
    // around, that is eps * max|M| (a looser bound keeps noise from driving pivots); the final
    // passes, on exact potentials, use eps * mean|M|, so that one huge entry does not leave the
    // ordinary ones priced out at its scale (it left 1e-6 relative gaps in the tests). Costs
    // spanning more than ~1e12 still lose digits in the potentials, as they do in POT.
    const double eps64 = 64.0 * std::numeric_limits<double>::epsilon();
    const double tol_tight = eps64 * std::max(csum / ((double)n * m), 1e-300);
    double tol = std::max(eps64 * cmax, tol_tight);
    // blocks of about 8 sqrt(nm) arcs: measured at n = m = 1000 against 1, 4 and 12 sqrt(nm),
    // a better entering arc per pivot outweighs the longer scan (SIMD pricing is cheap)
    const int block_rows = std::max(1, (int)std::ceil(8.0 * std::sqrt((double)n * m) / m));
    int next_row = 0;
    int64_t iters = 0;
    std::vector<double> pic(m);
    // every `refresh` pivots and at the end, potentials are recomputed exactly; the end check
    // repeats until a pass over all arcs with exact potentials finds nothing to improve
    const int64_t refresh = std::max<int64_t>(1024, N);
    int64_t since = 0;      // pivots since the last exact recomputation
    bool exact = true;      // the star's potentials are exact
    int64_t tight_pivots = 0;
    while (iters < max_iter) {
      if (since >= refresh) { recompute_potentials(art); since = 0; exact = true; }
      std::memcpy(pic.data(), pi.data() + n, sizeof(double) * m);
      double best = -tol;
      int bi = -1, bj = -1, seen_rows = 0, in_block = 0;
      while (seen_rows < n) {
        int j;
        const double r = price_row(next_row, pic.data(), tol, &j);
        if (j >= 0 && r < best) { best = r; bi = next_row; bj = j; }
        next_row = next_row + 1 == n ? 0 : next_row + 1;
        ++seen_rows;
        if (++in_block >= block_rows) {
          if (bi >= 0) break;
          in_block = 0;
        }
      }
      if (bi < 0) {  // no arc prices out: optimal, unless the potentials had drifted
        if (exact && tol <= tol_tight) break;
        tol = tol_tight;
        recompute_potentials(art);
        since = 0;
        exact = true;
        continue;
      }
      if (!pivot(bi, n + bj, best)) break;
      ++iters;
      ++since;
      exact = false;
      // the tight phase only polishes rounding-level gains: bound it so that arcs tied to
      // rounding cannot keep it going (each of its pivots gains at most ~eps * |M| anyway)
      if (tol <= tol_tight && ++tight_pivots > 4 * (int64_t)N + 1000) break;
    }
    // plan from the tree arcs between a row and a column
    double c = 0.0;
    for (int w = 0; w < N; ++w) {
      const int p = parent[w];
      if (p == root || flow[w] == 0.0) continue;
      const int i = w < n ? w : p, j = (w < n ? p : w) - n;
      X[(int64_t)i * m + j] += flow[w];
      c += flow[w] * (double)C[(int64_t)i * m + j];
    }
    *cost = c;
    for (int i = 0; i < n; ++i) uo[i] = -pi[i];
    for (int j = 0; j < m; ++j) vo[j] = pi[n + j];
    return iters;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> emd_solve_cpu(
    const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& M_in, int64_t max_iter) {
  TORCH_CHECK_VALUE(M_in.dim() == 3, "emd_solve: M must be (B, n, m), got ", M_in.sizes());
  TORCH_CHECK_TYPE(M_in.scalar_type() == at::kFloat || M_in.scalar_type() == at::kDouble,
                   "emd_solve: M must be float32 or float64, got ", M_in.scalar_type());
  const int64_t B = M_in.size(0);
  const int n = (int)M_in.size(1), m = (int)M_in.size(2);
  TORCH_CHECK_VALUE(a_in.dim() == 2 && a_in.size(0) == B && a_in.size(1) == n, "emd_solve: a must be (B, n)");
  TORCH_CHECK_VALUE(b_in.dim() == 2 && b_in.size(0) == B && b_in.size(1) == m, "emd_solve: b must be (B, m)");
  const at::Tensor M = M_in.contiguous();
  const at::Tensor a = a_in.to(at::kDouble).contiguous(), b = b_in.to(at::kDouble).contiguous();
  auto o = M.options().dtype(at::kDouble);
  at::Tensor plan = at::empty({B, n, m}, o), cost = at::zeros({B}, o), u = at::zeros({B, n}, o),
             v = at::zeros({B, m}, o);
  at::Tensor iters = at::zeros({B}, o.dtype(at::kLong));
  if (B == 0 || n == 0 || m == 0) return {plan, cost, u, v, iters};
  std::vector<int> status(B, kOk);
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "emd_solve", [&] {
    const scalar_t* pm = M.data_ptr<scalar_t>();
    for_each_problem(B, [&](int64_t bb) {
      const scalar_t* Mb = pm + bb * (int64_t)n * m;
      double* X = plan.data_ptr<double>() + bb * (int64_t)n * m;
      std::memset(X, 0, sizeof(double) * (size_t)n * m);  // here, not a parallel at::zeros
      bool finite = true;
      for (int64_t k = 0; k < (int64_t)n * m; ++k) finite &= std::isfinite((double)Mb[k]);
      if (!finite) { status[bb] = kInvalid; return; }
      Simplex<scalar_t> t;
      t.C = Mb;
      t.n = n;
      t.m = m;
      iters.data_ptr<int64_t>()[bb] = t.solve(a.data_ptr<double>() + bb * n, b.data_ptr<double>() + bb * m, X,
                                              cost.data_ptr<double>() + bb, u.data_ptr<double>() + bb * n,
                                              v.data_ptr<double>() + bb * m, max_iter);
    });
  });
  for (int64_t bb = 0; bb < B; ++bb)
    TORCH_CHECK_VALUE(status[bb] == kOk, "emd_solve: M contains NaN or infinite entries (problem ", bb, ")");
  return {plan, cost, u, v, iters};
}

}  // namespace
}  // namespace hotpath

TORCH_LIBRARY_IMPL(hotpath, CPU, m) {
  m.impl("lsa_solve", &hotpath::lsa_solve_cpu);
  m.impl("emd_solve", &hotpath::emd_solve_cpu);
}
