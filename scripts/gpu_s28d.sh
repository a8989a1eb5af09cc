#!/usr/bin/env bash
# Session 28, call 4 (H100 or H200; the pack of 0f7752c in .gpu; carry .gpu and .gl). ~330 s (trimmed to the device time left),
# bf16, phi3v-128k shapes, one timed process at a time on the quiet GPU:
#   1. the decode attention variants test on cuda bf16 and f16 side by side (the vector kernel
#      with its row of vectors from the host; call 3's expansion panicked);
#   2. the decode breakdown: the pack's defaults (one chunk held ahead, vector attention) at 1
#      and 10 rows; attention one value per lane (`decode_attention_vector` off) at 10;
#   3. generation 1024 → 128 through the engine at 10 parallel requests: the pack's defaults,
#      then `decode_attention_vector` off;
#   4. Nsight Compute: the vector decode attention at 10 rows of 1024 keys.
source scripts/gpu_env.sh
timed_folders s28d
cd $R
for dt in bf16 f16; do LIMIT=${TEST_S:-120} job dec-$dt env PHI3V_TEST_DEVICES=cuda:0:$dt $B/kernels decode_attention_variants --nocapture; done
wait; collect; cp /tmp/res/dec-* $RS/ 2>/dev/null
for n in dec-bf16 dec-f16; do echo "=== $n"
  grep -hE "read vectors|test result|rc=|FAIL|1024 keys, 96\]|lengths \[1024" $W/$n/out.txt $W/$n/err.txt | cut -c1-200 | head -10
  grep -q "test result: ok" $W/$n/out.txt || grep -v "^\s*$" $W/$n/err.txt | grep -v "decode_attention \[\|s  " | sort | uniq -c | sort -rn | head -6 | cut -c1-300; done
cd $D
BD=(bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --no-image --warmup 3 --runs 20)
for part in "default:1,10:" "attplanes:10:PHI3V_KERNELS_OFF=decode_attention_vector"; do
  IFS=: read -r name rows vars <<< "$part"
  env $vars timeout ${BD_S:-40} $B/phi3v "${BD[@]}" --decode-batches $rows --out $RS/bd-$name > $RS/bd-$name.log 2>&1
  echo "=== breakdown $name (${vars:-defaults}) rc=$? panics: $(grep -c panicked $RS/bd-$name.log)"
  grep -E "^## |proj|attention|whole" $RS/bd-$name/breakdown.md 2>/dev/null | grep -v "^# " | cut -c1-150 | head -14
done
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 4 --generation-runs 1 --batching engine --parallel 10"
TAIL=3 bench_parts $RS "gen-default::${GEN_S:-50}:$GEN" "gen-attplanes:PHI3V_KERNELS_OFF=decode_attention_vector:${GEN_S:-50}:$GEN"
grep -H "^generation" $RS/*.log | cut -c1-220
BD1=(bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --no-image --decode-batches 10 --warmup 0 --runs 1)
for part in "att:decode_attention_vector:1"; do
  IFS=: read -r name kernel count <<< "$part"
  timeout ${NCU_S:-40} $NCU --kernel-name regex:$kernel --launch-count $count $NCU_SECTIONS $B/phi3v "${BD1[@]}" --out $RS/ncu-bd-$name > $RS/ncu-$name.txt 2>&1
  echo "=== ncu $name rc=$?"; ncu_report $RS/ncu-$name.txt
done
cd $R; (cd $OUT && tar czf s28d.tgz s28d && rm -rf s28d)
