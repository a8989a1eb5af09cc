#!/usr/bin/env python3
"""The PyTorch peer of `phi3v bench attention`: torch's scaled_dot_product_attention at the same
shapes ("batch,heads,queries,keys,head_dim[,causal]" separated by ';'), random inputs, timed the
same way (warm-up calls, then `runs` calls between two synchronisations; the median of the
per-call times over --repeats such loops). Prints one row per shape and writes JSON.

Usage (GPU machine, same call as ours):
  python3 bench/peer_attention.py --dtype bf16 --shapes "1,32,1024,1024,96,causal" --out peer.json
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def parse(shape):
    parts = shape.split(",")
    b, h, q, k, d = (int(p) for p in parts[:5])
    return b, h, q, k, d, len(parts) > 5 and parts[5] == "causal"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", required=True)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out")
    a = ap.parse_args()
    dtype, rows = DTYPES[a.dtype], []
    print(f"| shape | SDPA ({a.dtype}) µs |\n|---|---|")
    for shape in a.shapes.split(";"):
        b, h, q, k, d, causal = parse(shape)
        if causal and q != k:
            raise SystemExit(f"{shape}: SDPA's is_causal aligns top-left; only queries == keys compare")
        g = torch.Generator(device="cuda").manual_seed(0)
        qs, ks, vs = (torch.randn(b, h, n, d, device="cuda", dtype=dtype, generator=g) for n in (q, k, k))
        f = lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal)
        for _ in range(a.warmup):
            f()
        times = []
        for _ in range(a.repeats):
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(a.runs):
                f()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t) * 1e6 / a.runs)
        us = statistics.median(times)
        rows.append({"shape": shape, "dtype": a.dtype, "median_us": us, "device": torch.cuda.get_device_name()})
        print(f"| {shape} | {us:.1f} |", flush=True)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
