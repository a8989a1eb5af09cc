#!/usr/bin/env python3
"""Where a decode step's time goes on the GPU, from an Nsight Systems kernel trace.

Input: `nsys stats --report cuda_gpu_trace --format csv` of a `phi3v bench run` generation
(a prompt, then many decode steps). The decode window starts 5 ms after the last kernel longer
than `--prefill-us` (the prompt's large products and attention) and ends 1 ms before the last
kernel. Prints, for that window: how busy the GPU was (sum of kernel times over the span), the
kernels per step, and per kernel name the GPU time per step; the number of steps is the count of
the kernel named by `--step-kernel` (once per layer) over `--layers`.
"""
import argparse
import csv
import json
import re
import sys
from collections import defaultdict


def short(name: str) -> str:
    name = re.sub(r"<.*", "", name)
    name = re.sub(r"\(.*", "", name)
    return name[:70]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("trace")
    p.add_argument("--prefill-us", type=float, default=120.0)
    p.add_argument("--step-kernel", default="decode_attention_combine")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--out")
    a = p.parse_args()
    rows = []
    with open(a.trace, newline="") as f:
        lines = [line for line in f if "," in line]
    for r in csv.DictReader(lines):
        try:
            start = float(r["Start (ns)"]) / 1e3
            dur = float(r["Duration (ns)"]) / 1e3
        except (KeyError, ValueError):
            continue
        name = r.get("Name", "")
        # Memory copies and sets have no kernel name of ours: keep them, they take GPU time too.
        rows.append((start, dur, short(name)))
    if not rows:
        print("no kernels in the trace", file=sys.stderr)
        return 1
    rows.sort()
    big = [s + d for s, d, _ in rows if d > a.prefill_us]
    begin = (max(big) if big else rows[0][0]) + 5000.0
    end = rows[-1][0] - 1000.0
    window = [r for r in rows if begin <= r[0] and r[0] + r[1] <= end]
    if len(window) < 10:
        print(f"decode window too short ({len(window)} kernels)", file=sys.stderr)
        return 1
    span = window[-1][0] + window[-1][1] - window[0][0]
    busy = sum(d for _, d, _ in window)
    per = defaultdict(lambda: [0, 0.0])
    for _, d, n in window:
        per[n][0] += 1
        per[n][1] += d
    marks = sum(c for n, (c, _) in per.items() if a.step_kernel in n)
    steps = marks / a.layers if marks else float("nan")
    gaps = sorted(window[i + 1][0] - (window[i][0] + window[i][1]) for i in range(len(window) - 1))
    summary = {
        "window_ms": span / 1e3,
        "kernels": len(window),
        "gpu_busy": busy / span,
        "steps": steps,
        "step_ms": span / 1e3 / steps if steps == steps else None,
        "gpu_ms_per_step": busy / 1e3 / steps if steps == steps else None,
        "kernels_per_step": len(window) / steps if steps == steps else None,
        "gap_us_median": gaps[len(gaps) // 2],
        "gap_us_p90": gaps[int(len(gaps) * 0.9)],
        "by_kernel": {n: {"calls_per_step": c / steps, "us_per_call": t / c, "us_per_step": t / steps}
                      for n, (c, t) in sorted(per.items(), key=lambda kv: -kv[1][1])} if steps == steps else {},
    }
    print(f"window {summary['window_ms']:.2f} ms, {len(window)} kernels, GPU busy {100 * summary['gpu_busy']:.1f} %, "
          f"{steps:.1f} steps: {summary['step_ms']:.3f} ms per step, GPU {summary['gpu_ms_per_step']:.3f} ms per step, "
          f"{summary['kernels_per_step']:.1f} kernels per step; gap between kernels median {summary['gap_us_median']:.2f} us, "
          f"p90 {summary['gap_us_p90']:.2f} us")
    print("| kernel | calls / step | µs / call | µs / step |")
    print("|---|---|---|---|")
    for n, v in summary["by_kernel"].items():
        print(f"| `{n}` | {v['calls_per_step']:.2f} | {v['us_per_call']:.2f} | {v['us_per_step']:.1f} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
