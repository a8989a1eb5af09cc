#!/usr/bin/env python3
"""Sums the four decode projections' µs per call of `phi3v bench breakdown` runs.

Usage: breakdown_projections.py DIR NAME:VARS … — for each variant NAME (its results in
DIR/bd-NAME/breakdown.md, run with the environment VARS), prints to stderr the projections'
sum per layer, each projection and the attention; prints to stdout the VARS of the fastest
variant whose VARS start with `--prefix` (default PHI3V_MMA_LINEAR), or nothing.
"""
import argparse
import re
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--prefix", default="PHI3V_MMA_LINEAR")
    a = ap.parse_args()
    best = None
    for part in a.variants:
        name, _, env = part.partition(":")
        try:
            md = open(f"{a.dir}/bd-{name}/breakdown.md").read()
        except OSError:
            continue
        us = [float(m.group(1)) for m in re.finditer(r"^\| [^|]*proj[^|]* \| \d+ \| ([\d.]+) \|", md, re.M)]
        att = re.search(r"^\| attention \| \d+ \| ([\d.]+) \|", md, re.M)
        if len(us) != 4:
            continue
        print(f"{name}: projections {sum(us):.1f} µs per layer ({' / '.join(f'{u:.1f}' for u in us)}), attention {att.group(1) if att else '?'}", file=sys.stderr)
        if env.startswith(a.prefix) and (best is None or sum(us) < best[0]):
            best = (sum(us), env)
    print(best[1] if best else "")


if __name__ == "__main__":
    main()
