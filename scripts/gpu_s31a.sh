#!/usr/bin/env bash
# Session 31, call 1 (H100 or H200; a pack of phi3v and the kernels test in .gpu; carry .gpu
# and .gl). ≤ 400 s, bf16, phi3v-128k shapes, one timed process at a time:
#   1. the tensor-core products' test on cuda bf16 and f16 side by side, register fragments
#      only: strided blocks, runs of adjacent blocks (`mma_linear_runs`) and cubes fitted to
#      whole waves (`mma_fragments_waves`, new: 5 tiles, 32 planes); beside them the decode
#      attention test on cuda bf16 (`decode_attention_early_values` off and on, new);
#      the main kernels test on cuda bf16 (its flash attention as `mma`: register fragments, new);
#   2. `bench attention` bf16 (prefill 1024 and 4096 causal, CLIP): `scores` against the
#      tensor-core flash attention from register fragments and from staged tiles; torch's SDPA;
#   3. the decode breakdown at 10 rows: the default (fragments 16,32,4,3,2, strided), whole
#      waves from 16 planes and up to 64 columns (with and without runs), up to 32 columns,
#      from 32 planes, runs alone, the `cmma` register kernel, the value rows loaded early, then
#      the default and waves again;
#   4. generation 1024 → 128 through the engine, 10 parallel requests (8 runs): a first run
#      that compiles, then the default and the fastest products' variant (with the early
#      values where they beat the default's attention) alternating, twice each;
#   5. the decode breakdown at 1 row: the CUDA-core skinny product's default (4,4,1) against
#      deeper loads, more planes and wider groups, the norm's squares summed beside the
#      products (`skinny_norm_after`, new in the pack of 0b0091e), the early values, and the
#      whole-wave fragments from 1 row;
#   6. Nsight Compute on the whole-wave shapes' first four products (registers, occupancy),
#      then on the skinny product's first four at 1 row.
source scripts/gpu_env.sh
echo "pack of $(head -1 .gpu/commit.txt)"
timed_folders s31a
cd $R
for dt in bf16 f16; do
  LIMIT=${TEST_S:-170} job mma-$dt env PHI3V_TEST_DEVICES=cuda:0:$dt PHI3V_TEST_MMA_READS=3 $B/kernels tensor_core --nocapture
done
LIMIT=${TEST_S:-170} job decode-bf16 env PHI3V_TEST_DEVICES=cuda:0:bf16,cuda:0:f16 $B/kernels decode_attention_equals --nocapture
LIMIT=${TEST_S:-170} job kernels-bf16 env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels kernels_equal --nocapture
wait; collect; cp /tmp/res/mma-* /tmp/res/decode-* /tmp/res/kernels-* $RS/ 2>/dev/null
echo "=== kernels (flash attention as mma, register fragments)"; grep -hE "test result|panicked|rc=|FAIL|as mma|mma attention:|fragments" $W/kernels-bf16/out.txt $W/kernels-bf16/err.txt | grep -E "FAIL|test result|panicked|rc=|mma attention:|577, 577|200 queries|never|fragments" | cut -c1-230 | head -14
echo "=== decode"; grep -hE "test result|panicked|rc=|FAIL|\[1, 32/32 heads, 1024 keys|lengths \[1024" $W/decode-bf16/out.txt $W/decode-bf16/err.txt | cut -c1-230 | head -12
for n in mma-bf16 mma-f16; do echo "=== $n"
  grep -hE "tensor-core products|test result|panicked|rc=|FAIL|\[10, 64\] · \[64, 9216\].*waves" $W/$n/out.txt $W/$n/err.txt | cut -c1-230 | head -14
  grep -q "test result: ok" $W/$n/out.txt || grep -v "^\s*$" $W/$n/err.txt | grep -v "mma_linear \[\|s  " | tail -8 | cut -c1-300; done
echo "tests done at $SECONDS s"
cd $D
# The flash attention on tensor cores, register fragments (new) and staged `cmma` tiles,
# against `scores` (time and relative difference), bf16: prefill 1024 and 4096 causal, CLIP.
SHAPES="1,32,1024,1024,96,causal;1,32,4096,4096,96,causal;17,16,577,577,64"
for part in "att-frag:" "att-staged:PHI3V_KERNELS_OFF=mma_attention_fragments"; do
  IFS=: read -r name vars <<< "$part"
  env $vars timeout ${ATT_S:-45} $B/phi3v bench attention --device cuda --dtype bf16 --flash "scores;mma" --shapes "$SHAPES" \
    --warmup 2 --runs 10 --out $RS/$name.json > $RS/$name.log 2>&1
  echo "=== $name rc=$? at $SECONDS s"; grep "^|\|panicked\|refused\|rror" $RS/$name.log | sort -u | head -10 | cut -c1-200
done
timeout 40 python3 $R/bench/peer_attention.py --dtype bf16 --shapes "$SHAPES" --out $RS/peer-att-bf16.json 2>&1 | tail -4
ON=PHI3V_KERNELS_ON
# In order of what decides most (a short call runs the first ones): default, whole waves, early
# values, then their repeats, then the other shapes.
VARIANTS=("def:" "w64:PHI3V_MMA_LINEAR=16,64,4,3,2 $ON=mma_fragments_waves" "early:$ON=decode_attention_early_values"
  "w64r:PHI3V_MMA_LINEAR=16,64,4,3,2 $ON=mma_fragments_waves,mma_linear_runs" "def2:" "w64b:PHI3V_MMA_LINEAR=16,64,4,3,2 $ON=mma_fragments_waves"
  "early2:$ON=decode_attention_early_values" "runs:$ON=mma_linear_runs" "w32:$ON=mma_fragments_waves"
  "w64p32:PHI3V_MMA_LINEAR=32,64,4,3,2 $ON=mma_fragments_waves" "w64p8:PHI3V_MMA_LINEAR=8,64,4,3,4 $ON=mma_fragments_waves" "reg:PHI3V_MMA_LINEAR=8,64,4,1,1")
BD_S=${BD_S:-35} breakdown_variants ${BD_UNTIL:-290} "${VARIANTS[@]}" > /dev/null
BEST=$(python3 $R/bench/breakdown_projections.py --prefix PHI3V_ "$RS" "${VARIANTS[@]}")
grep -H "whole step" $RS/bd-*/breakdown.md 2>/dev/null | grep -v "bd-b1-" | sed 's|.*/bd-||' | cut -c1-120
# The attention's µs per call of a breakdown variant, and the early values added to BEST's
# switches where both of their runs beat both of the default's.
att() { grep -h "^| attention |" $RS/bd-$1/breakdown.md 2>/dev/null | awk -F'|' '{print $4+0}'; }
A=$(printf "%s\n" $(att def) $(att def2) | sort -n | head -1); E=$(printf "%s\n" $(att early) $(att early2) | sort -n | tail -1)
echo "attention: default ${A:-?} (best of two), early values ${E:-?} (worst of two)"
if [ -n "$A" ] && [ -n "$E" ] && python3 -c "import sys; sys.exit(0 if $E < $A else 1)"; then
  if [[ "$BEST" == *"$ON="* ]]; then BEST=${BEST/$ON=/$ON=decode_attention_early_values,}; else BEST="${BEST:+$BEST }$ON=decode_attention_early_values"; fi
fi
echo "fastest variant: ${BEST:-none} at $SECONDS s"
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 8 --generation-runs 1 --batching engine --parallel 10"
if [ $SECONDS -lt ${GEN_UNTIL:-320} ]; then
  TAIL=1 bench_parts $RS "gen-compile::${GEN_S:-45}:$GEN" "gen-default-1::${GEN_S:-45}:$GEN" ${BEST:+"gen-best-1:$BEST:${GEN_S:-45}:$GEN"} \
    "gen-default-2::${GEN_S:-45}:$GEN" ${BEST:+"gen-best-2:$BEST:${GEN_S:-45}:$GEN"} > /dev/null
  grep -H "^generation" $RS/gen-*.log | cut -c1-220
fi
B1=("b1-def:" "b1-s442:PHI3V_SKINNY=4,4,2" "b1-s421:PHI3V_SKINNY=4,2,1" "b1-s841:PHI3V_SKINNY=8,4,1" "b1-s822:PHI3V_SKINNY=8,2,2"
  "b1-w64:PHI3V_MMA_LINEAR=16,64,1,3,2 $ON=mma_fragments_waves" "b1-early:$ON=decode_attention_early_values" "b1-after:$ON=skinny_norm_after"
  "b1-def2:" "b1-after2:$ON=skinny_norm_after" "b1-both:$ON=skinny_norm_after,decode_attention_early_values")
BD_ROWS=1 BD_S=${BD_S:-35} breakdown_variants ${B1_UNTIL:-400} "${B1[@]}" | grep "no time left\|panicked\|rror"
python3 $R/bench/breakdown_projections.py --prefix PHI3V_ "$RS" "${B1[@]}" > /dev/null
grep -H "whole step" $RS/bd-b1-*/breakdown.md | sed 's|.*/bd-||' | cut -c1-120
BD1=(bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --no-image --decode-batches 10 --warmup 0 --runs 1)
if [ $SECONDS -lt ${NCU_UNTIL:-420} ]; then
  env PHI3V_MMA_LINEAR=16,64,4,3,2 $ON=mma_fragments_waves timeout ${NCU_S:-40} $NCU --kernel-name regex:mma_linear_fragments --launch-count 4 $NCU_SECTIONS $B/phi3v "${BD1[@]}" --out $RS/ncu-bd > $RS/ncu-waves.txt 2>&1
  echo "=== ncu waves rc=$?"; ncu_report $RS/ncu-waves.txt | grep -v "µs$" | grep -E "mma_linear|DRAM|Duration|Registers|Theoretical|Achieved|Grid|Block Limit"
fi
if [ $SECONDS -lt ${NCU2_UNTIL:-450} ]; then
  timeout ${NCU_S:-40} $NCU --kernel-name regex:skinny --launch-count 4 $NCU_SECTIONS $B/phi3v "${BD1[@]:0:11}" --decode-batches 1 --warmup 0 --runs 1 --out $RS/ncu-b1 > $RS/ncu-skinny.txt 2>&1
  echo "=== ncu skinny b=1 rc=$?"; ncu_report $RS/ncu-skinny.txt | grep -v "µs$"
fi
echo "done at $SECONDS s"
cd $R; (cd $OUT && tar czf s31a.tgz s31a && rm -rf s31a)
