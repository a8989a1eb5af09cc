#!/usr/bin/env python3
"""The PyTorch peer of `phi3v bench matmul`: `F.linear` (cuBLAS) at the same products, bf16 by
default, timed the same way (warm-up calls, then `runs` calls between two synchronisations, mean
per call). Writes the JSON `phi3v bench matmul --peer FILE` reads.

Usage (GPU machine, same call as ours):
  python3 bench/peer_matmul.py --out peer_matmul.json
  phi3v bench matmul --peer peer_matmul.json --out matmul.json
"""
import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

# The defaults of `phi3v bench matmul --shapes` (rows,d_in,d_out).
SHAPES = "1024,3072,9216;1024,3072,3072;1024,3072,16384;1024,8192,3072;64,3072,9216;64,3072,3072;64,3072,16384;64,8192,3072;9809,1024,1024;9809,1024,4096;9809,4096,1024;8192,8192,8192"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[a.dtype]
    timings = []
    with torch.no_grad():
        for shape in a.shapes.split(";"):
            rows, d_in, d_out = (int(v) for v in shape.split(","))
            x = torch.randn(rows, d_in, device="cuda", dtype=dtype)
            w = torch.randn(d_out, d_in, device="cuda", dtype=dtype) * 0.02
            for _ in range(a.warmup):
                F.linear(x, w)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(max(a.runs, 1)):
                F.linear(x, w)
            torch.cuda.synchronize()
            us = (time.perf_counter() - t) * 1e6 / max(a.runs, 1)
            tflops = 2 * rows * d_in * d_out / us / 1e6
            print(f"{rows} x {d_in} -> {d_out}: {us:.1f} us, {tflops:.1f} TFLOP/s", file=sys.stderr)
            timings.append({"product": {"rows": rows, "d_in": d_in, "d_out": d_out}, "us": us, "tflops": tflops})
    report = {"device": torch.cuda.get_device_name(), "dtype": a.dtype, "torch": torch.__version__, "timings": timings}
    json.dump(report, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
