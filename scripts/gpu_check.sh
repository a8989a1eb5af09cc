#!/usr/bin/env bash
# Cross-device checks on the GPU machine, all jobs at once (kernel compilation is CPU-bound and
# the machine has 16 cores): the parity suite per device and dtype, `phi3v generate` end to end
# against the fixture's greedy tokens, MMMU sample runs and their comparison with the CPU.
# Each job runs in its own folder with its own CubeCL caches (seeded from .gpu/cache.tgz).
# Usage (device tool, carry .gpu and .gl): bash scripts/gpu_check.sh [seconds per job]
source scripts/gpu_env.sh
LIMIT=${1:-420}; M=$R/tests/fixtures/models; I=$R/tests/fixtures/images; S=$R/tests/fixtures/mmmu_sample
# cubek's matmul kernels one family at a time at every k (patches/cubek-matmul): the binary is
# `cargo test --release -p phi3v-tests --features cuda,wgpu --test matmul_k_stages --no-run`,
# copied to .gpu/bin/matmul_k_stages.
[ -x $B/matmul_k_stages ] && job kernels env PHI3V_TEST_DEVICES=cuda:f32,wgpu:0:f32 $B/matmul_k_stages --nocapture
# The engine's concurrency test (issue 8) and the server's load test (issue 12) on CUDA with the
# tiny checkpoint: `cargo test --release --no-run` of tests/tests/engine.rs and
# server/tests/load.rs with the cuda feature, copied to .gpu/bin/{engine,load}.
[ -x $B/engine ] && job engine-cuda env PHI3V_TEST_DEVICES=cuda:f32,cuda:bf16,wgpu:f32 $B/engine concurrent --nocapture
[ -x $B/load ] && job server-load-cuda env PHI3V_SERVER_TEST_DEVICE=cuda PHI3V_SERVER_TEST_DTYPE=f32 PHI3V_SERVER_LOAD_REQUESTS=400 PHI3V_SERVER_LOAD_TOKENS=32 $B/load --nocapture
# The benchmark's kernels, compiled (and autotuned, under this call's load) ahead for gpu_bench.sh,
# which keeps the compiled kernels and autotunes again on a quiet GPU.
[ -n "$WARM_BENCH" ] && job bench-warm $B/phi3v bench run --preset phi3v-128k --device cuda $BENCH_SHAPES --warmup 0 --runs 1 --out $W/bench-warm/ours
job parity-cuda-f32  $B/phi3v-parity --device cuda --dtype f32 --stages
job parity-cuda-bf16 $B/phi3v-parity --device cuda --dtype bf16
job parity-wgpu-f32  $B/phi3v-parity --device wgpu --dtype f32 --stages
job parity-wgpu-f16  $B/phi3v-parity --device wgpu --dtype f16
for d in cuda:f32 cuda:bf16 wgpu:f32; do
  job generate-${d/:/-} $B/phi3v generate --model $M/phi3v-tiny --device ${d%%:*} --dtype ${d##*:} --image $I/astronaut.png --prompt "What is the content of this image in details?" --max-new-tokens 10 --json
done
for d in cpu:f32 cuda:bf16 cuda:f32 wgpu:f32; do
  job mmmu-${d/:/-} $B/phi3v mmmu run --data $S --model $M/phi35v-tiny --device ${d%%:*} --dtype ${d##*:} --out $W/mmmu-${d/:/-}.jsonl
done
wait
for d in $W/*/; do n=$(basename $d); echo "=== $n"; cat $d/out.txt; grep -v ": [0-9.]* s$" $d/err.txt | grep -v "^\s*$" | tail -4; done
mkdir -p /tmp/res
for d in cuda-bf16 cuda-f32 wgpu-f32; do echo "=== compare cpu-f32 vs $d"; $B/phi3v mmmu compare $W/mmmu-cpu-f32.jsonl $W/mmmu-$d.jsonl --out /tmp/res/compare-cpu-f32-vs-$d.md --json /tmp/res/compare-cpu-f32-vs-$d.json; cat /tmp/res/compare-cpu-f32-vs-$d.md | head -30; done
 collect; cp $W/*.jsonl $W/*.md $W/*.json /tmp/res/ 2>/dev/null
tar czf $OUT/results.tgz -C /tmp/res .
for d in $W/*/; do rm -f $d/out.txt $d/err.txt $d/cubecl.toml; done
[ -d $W/bench-warm ] && tar czf - -C $W/bench-warm --exclude=./ours . | split -b 15M - $OUT/bench-cache.tgz.part-
tar czf $OUT/cache.tgz -C $W/parity-cuda-bf16 . ; tar czf $OUT/cache-f32.tgz -C $W/parity-cuda-f32 . ; tar czf $OUT/cache-wgpu.tgz -C $W/parity-wgpu-f32 . ; ls -la $OUT
