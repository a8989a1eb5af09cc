#!/usr/bin/env python3
"""Each kernel's launches and GPU time from Nsight Compute's CSV of `gpu__time_duration.sum`
(`ncu --metrics gpu__time_duration.sum --csv …`): the total over all launches, then one table
row per kernel name (template arguments cut), the largest first:
| name | launches | µs per launch | µs in all |"""
import collections
import csv
import re
import sys


def main(path, top=25):
    rows = [r for r in csv.DictReader(line for line in open(path) if line.startswith('"'))]
    kernels = collections.defaultdict(lambda: [0, 0.0])
    scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}
    for r in rows:
        name = re.sub(r"[<(].*", "", r.get("Kernel Name", ""))[:60]
        us = float(r["Metric Value"].replace(",", "")) * scale.get(r["Metric Unit"], 1.0)
        kernels[name][0] += 1
        kernels[name][1] += us
    total = sum(t for _, t in kernels.values())
    print(f"{len(rows)} launches, {total:.0f} us of GPU time")
    for name, (n, t) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"| {name} | {n} | {t / n:.2f} | {t:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1])
