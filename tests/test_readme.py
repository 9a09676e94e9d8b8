"""Every ```python block of README.md runs as written: a newcomer copies them first.

Each block runs on its own, in a fresh namespace (so each must do its own imports) and in a
temporary working directory (snippets may write files such as "q.pt"). A block whose first line
is `# not run: <reason>` is skipped with that reason shown; shell blocks are never run.
"""
import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
_SKIP = re.compile(r"#\s*not run:\s*(\S.*)")


def python_blocks(text):
    """(line number of the block's first code line, source) for every ```python block."""
    out = []
    for m in _FENCE.finditer(text):
        if m.group(1).lower() in ("python", "py"):
            out.append((text.count("\n", 0, m.start(2)) + 1, m.group(2)))
    return out


with open(README, encoding="utf-8") as _f:
    BLOCKS = python_blocks(_f.read())


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


def test_extractor_sees_fences_only():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```py\ny = 2\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (9, "y = 2\n")]


@pytest.mark.parametrize("line,src", BLOCKS, ids=[f"README.md:{ln}" for ln, _ in BLOCKS])
def test_readme_block_runs(line, src, tmp_path, monkeypatch):
    first = src.lstrip().splitlines()[0] if src.strip() else ""
    skip = _SKIP.match(first)
    if skip:
        pytest.skip(f"README.md:{line}: {skip.group(1)}")
    monkeypatch.chdir(tmp_path)
    # padded with blank lines so that a traceback names the README's own line numbers
    code = compile("\n" * (line - 1) + src, "README.md", "exec")
    exec(code, {"__name__": "__readme__"})
