"""Differential test vectors from the official MMMU evaluator.

Writes official_vectors.json, read by accuracy/tests/official_vectors.rs. Needs the official
eval_utils.py (https://github.com/MMMU-Benchmark/MMMU, eval/eval_utils.py; it imports numpy) on
PYTHONPATH; it is not vendored here. Run with CPython 3.11:

    PYTHONPATH=/path/to/MMMU/eval python3 gen_official_vectors.py official_vectors.json
"""
import json, random, struct, sys
import eval_utils as E

def fbits(x):
    if x != x:
        return "nan"
    return str(struct.unpack('<Q', struct.pack('<d', x))[0])

def enc(v):
    return ["n", fbits(v)] if isinstance(v, float) else ["s", v]

N = int(sys.argv[2]) if len(sys.argv) > 2 else 300
gen = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 12345)
opt_sets = [
    ["75 + 13.3 cos(250t - 57.7°)V", "75 + 23.3 cos(250t - 57.7°)V", "45 + 3.3 cos(250t - 57.7°)V", "95 + 13.3 cos(250t - 57.7°)V"],
    ["Red", "Green", "Blue", "Yellow", "Purple"],
    ["$6", "$7", "$8", "$9"],
    ["It's a cat", "A dog", "a bird", "None of the above", "All of the above", "A", "b"],
    ["<image 1>", "<image 2>", "<image 3>"],
    ["True", "False"],
    ["1", "2", "3", "4", "5", "6", "7", "8", "9"],
]
filler = ["the", "answer", "is", "I", "think", "option", "correct", "because", "so", "it", "Answer:", "maybe",
          "a", "A", "an", "(", ")", ".", ",", ":", "'", "!", "?", ";", "\n", " ", "  ", "\t", "é", "Σ", "İ"]

def mc_response(opts):
    letters = [chr(65 + i) for i in range(len(opts))]
    parts = []
    for _ in range(gen.randint(0, 12)):
        r = gen.random()
        if r < 0.25:
            L = gen.choice(letters + ["a", "b", "Z"])
            parts.append(gen.choice([L, f"({L})", f"{L}.", f"{L})", f"{L}:", f" {L} ", f"'{L}'"]))
        elif r < 0.4:
            o = gen.choice(opts)
            parts.append(gen.choice([o, o.lower(), o.upper()]))
        else:
            parts.append(gen.choice(filler))
    sep = gen.choice([" ", "", "\n", " "])
    s = sep.join(parts)
    if gen.random() < 0.3:
        s = gen.choice([",", ".", "!", "'", ":", "..", " "]) + s + gen.choice([",", ".", "!", "'", ":", "..", " ", "\n"])
    return s

num_frag = ["1,000", "1,000.5", "12,345,678", "1,2345", "12.97", "-3", "-0.5", ".5", "3.14159", "1e5", "2.5E-3",
            "-2e+10", "1/64", "24/7", "3.429", "0.125", "2.675", "1.005", "100", "007", "1_000", "inf", "nan",
            "٣", "١٢.٥", "5²", "36watts", "x=3", "= 4", "10%", "$5", "3.", "1.2.3", "0x10", "1e", "-", "12,34"]
words = ["the", "answer", "is", "so", "thus", "therefore", "final", "result", "could be", "=", "The", "Answer",
         "Is", "watts", "m/s", "approximately", ".", "\n", ". ", ",", ":", "'", "MgS", "Tampa", "Florida", "C",
         "c", "x", "transformation", "  ", "A.", "B"]

def open_response():
    parts = []
    for _ in range(gen.randint(0, 10)):
        parts.append(gen.choice(num_frag) if gen.random() < 0.4 else gen.choice(words))
    s = gen.choice([" ", "", " ", "\n"]).join(parts)
    if gen.random() < 0.3:
        s = gen.choice([" ", ".", "\n", "  ."]) + s + gen.choice([".", " .", "\n", ". ", ""])
    return s

golds = ["30", "12.97", "1/64", "C", "transformation", "1000", "0.5", "3.14", "-3", "100", ["24/7", "3.429"],
         ["$MgS$", "MgS"], ["Tampa", "Florida"], "inf", "12", "4", "x", "1,000"]

random.seed(42)  # what eval_utils does at import; consumed in order below
mc = []
for i in range(N):
    opts = gen.choice(opt_sets)
    letters = [chr(65 + j) for j in range(len(opts))]
    idx = dict(zip(letters, opts))
    resp = mc_response(opts)
    gold = gen.choice(letters)
    pred = E.parse_multi_choice_response(resp, letters, idx)
    mc.append({"response": resp, "options": opts, "gold": gold, "pred": pred, "correct": E.eval_multi_choice(gold, pred)})

op = []
for i in range(N):
    resp = open_response()
    gold = gen.choice(golds)
    preds = E.parse_open_response(resp)
    op.append({"response": resp, "gold": gold, "preds": sorted([enc(p) for p in preds]),
               "keys": E.get_key_subresponses(resp), "numbers": [E.extract_numbers(k) for k in E.get_key_subresponses(resp)],
               "correct": E.eval_open(gold, preds)})

rounds = []
for i in range(300):
    r = gen.random()
    if r < 0.3:
        x = gen.randint(-100000, 100000) / 1000 + gen.choice([0, 0.005, -0.005, 5e-4])
    elif r < 0.6:
        x = gen.uniform(-1e6, 1e6)
    elif r < 0.8:
        x = struct.unpack('<d', struct.pack('<Q', gen.getrandbits(64)))[0]
    else:
        x = gen.randint(0, 10**6) / 200
    if x != x or x in (float('inf'), float('-inf')):
        continue
    rounds.append([fbits(x), fbits(round(x, 2))])

floats = []
alphabet = "0123456789._-+eE ,infatyINF\t\u00a0٣"
bases = ["1", "12.5", "-3", ".5", "1e5", "2.5E-3", "inf", "-Infinity", "nan", "1_000", "1e1_0", "007", "+4", "3."]
for i in range(300):
    if i % 2:
        s = "".join(gen.choice(alphabet) for _ in range(gen.randint(0, 7)))
    else:
        s = gen.choice(bases)
        for _ in range(gen.randint(0, 2)):
            p = gen.randint(0, len(s))
            s = s[:p] + gen.choice(["_", " ", "0", ".", "e", "-", "٣", "\u00a0", "\u2003", "x"]) + s[p:]
    try:
        v = float(s)
        floats.append([s, fbits(v)])
    except ValueError:
        floats.append([s, None])

json.dump({"source": "MMMU-Benchmark/MMMU eval/eval_utils.py run on CPython %s; random.seed(42) once, multiple_choice consumed in order" % sys.version.split()[0],
           "multiple_choice": mc, "open": op, "round2": rounds, "float": floats},
          open(sys.argv[1], "w"), ensure_ascii=False, indent=0)
