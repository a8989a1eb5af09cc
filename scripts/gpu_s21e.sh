#!/usr/bin/env bash
# Session 21, last call (~170 s of device time left; carry .gpu with only phi3v, `cargo build
# --release` of commit b5c6e23, xz'd as .gpu/bin/phi3v.xz): the plane-per-row softmax
# (`attention_softmax_planes`) against the cube-per-row one, inside the `scores` attention with
# cuBLAS on CubeCL's stream, beside the 4,2,2 tiles: `bench attention` at prefill's causal
# 1×32×1024×1024×96 and CLIP's 17×16×577×577×64, bf16. Each run's `rel. diff` column compares
# the tiles' output with `scores`' (the first choice); the second run's kernels come from the
# first's cache (`cubecl.toml` of gpu_env.sh).
source scripts/gpu_env.sh
RS=$OUT/s21e; mkdir -p $RS
for part in planes:"" cube:attention_softmax_planes; do
  name=${part%%:*}; s=$(date +%s)
  PHI3V_KERNELS_OFF=${part#*:} timeout ${ATT_S:-75} $B/phi3v bench attention --device cuda --dtype bf16 --flash "scores;4,2,2" \
    --warmup 2 --runs 10 --out $RS/att-$name.json > $RS/att-$name.md 2> $RS/att-$name.log
  echo "=== att-$name rc=$? $(( $(date +%s) - s )) s"; grep "^| [0-9]" $RS/att-$name.md | cut -c1-170; grep -i "error\|panic" $RS/att-$name.log | head -3
done
(cd $OUT && tar czf s21e.tgz s21e && rm -rf s21e)
