#!/usr/bin/env bash
# Session 15, third device call (carry .gpu: phi3v, kernels and engine test binaries, call 2's
# cache part):
#   background (compilation-bound):
#     kernels — the kernels test on cuda bf16 (flash tilings, rotary_write_paged);
#     engine  — the engine's tests on cuda f32 (concurrent requests equal solo runs, the
#               small-pool stress test) through the paged write kernel;
#   foreground (timing), one after the other:
#     eng    — the engine at 1 and 10 parallel, 1024 → 128 (rotary_write_paged on);
#     eng1off — the engine at 1 parallel with PHI3V_KERNELS_OFF=rotary_write_paged (A/B);
#     s64    — the static batch at 64 parallel (the products at 64 rows as one product).
# Returns s15c.tgz and the kernel caches (bench folder and the test jobs').
# Usage (device tool): bash scripts/gpu_s15c.sh   (about 560 s)
source scripts/gpu_env.sh
D=$W/bench; mkdir -p $D; R15=$OUT/s15c; mkdir -p $R15
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > $D/cubecl.toml
[ -f .gpu/cache.tgz ] && tar xzf .gpu/cache.tgz -C $D
LIMIT=${TESTS_S:-540} job kernels env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels --nocapture
LIMIT=${TESTS_S:-540} job engine env PHI3V_TEST_DEVICES=cuda:0:f32 $B/engine --test-threads 1
cd $D
for part in "eng::${ENG_S:-200}:--scenarios generation --parallel 1,10 --batching engine --shapes 1024x128 --warmup 1 --generation-runs 2" \
            "eng1off:rotary_write_paged:${OFF_S:-80}:--scenarios generation --parallel 1 --batching engine --shapes 1024x128 --warmup 1 --generation-runs 2" \
            "s64::${S64_S:-200}:--scenarios generation --parallel 64 --batching static --shapes 1024x128 --warmup 1 --generation-runs 1"; do
  name=${part%%:*}; rest=${part#*:}; off=${rest%%:*}; rest=${rest#*:}; secs=${rest%%:*}; args=${rest#*:}
  s=$(date +%s); PHI3V_KERNELS_OFF=$off timeout $secs $B/phi3v bench run --preset phi3v-128k --device cuda $args --out $R15/$name > $R15/$name.log 2>&1
  echo "=== $name (kernels off: ${off:-none}) rc=$? $(( $(date +%s) - s )) s"; grep -v "^\s*$" $R15/$name.log | tail -5 | cut -c1-220
done
cd $R
wait
collect; cp /tmp/res/kernels.* /tmp/res/engine.* $R15/ 2>/dev/null
TAIL=40 show kernels engine | tail -80
(cd $OUT && tar czf s15c.tgz s15c && rm -rf s15c)
tar czf - -C $D . | split -b 15M - $OUT/cache.tgz.part-
for j in kernels engine; do tar czf - -C $W/$j --exclude=out.txt --exclude=err.txt . | split -b 15M - $OUT/$j-cache.tgz.part-; done
ls -la $OUT
