#!/usr/bin/env bash
# Session 37's second call (after gpu_s37a.sh; the same pack): cuBLAS for the decode steps'
# products at 10 rows. H100 or H200; carry .gpu and .gl. ≤ 560 s.
# The question: the 10-row projections run at 111–122 µs per layer (226 MB of bf16 weights:
# ~1.9 TB/s, 55–60 % of the H100's DRAM) in the tensor-core kernel with the norm, SiLU·mul and
# residual inside; cuBLAS took 24 µs for 16 × 3072 · 3072 × 9216 (2.4 TB/s, session 1's
# table). With `PHI3V_BLAS_MIN_ROWS=1 PHI3V_SKINNY_MAX_ROWS=0` every decoder product goes to
# cuBLASLt (the residual in its epilogue), the norms and SiLU·mul to their own kernels (3 more
# launches per layer). Prediction: projections −15 to −25 µs per layer if cuBLAS holds 2.3
# TB/s at 10 rows, less the three launches (~10–15 µs of device time per layer); 10 parallel
# within ±4 % of the default — worth a default only if ≥ 3 % faster.
#   1. 10 parallel 1024 → 128 through the engine, default / cuBLAS alternating twice;
#   2. the breakdown of a 10-row step both ways (the projections' rows);
#   3. b=1 through the engine, default / cuBLAS (one row: cuBLAS's GEMV against the skinny
#      kernel), once each.
source scripts/gpu_env.sh
echo "pack of $(head -2 .gpu/commit.txt | tr '\n' ' ')"
timed_folders s37b
cd $D
alternate $RS gen10 ${GEN10_S:-55} "$(gen_args 10)" default "" blas "$BLAS_DECODE"
echo "gen10 done at $SECONDS s"
for part in "default:" "blas:$BLAS_DECODE"; do
  IFS=: read -r name vars <<< "$part"
  env $vars timeout ${BD_S:-60} $B/phi3v bench breakdown --device cuda --dtype bf16 --preset phi3v-128k --decode-batches 10 --prefill 0 --no-image --out $RS/bd10-$name > $RS/bd10-$name.log 2>&1
  echo "=== breakdown 10 rows $name rc=$?"; grep -E "proj|step|attention|norm|silu" $RS/bd10-$name.log | head -12 | cut -c1-160
done
[ $SECONDS -lt ${GEN1_UNTIL:-430} ] && {
  alternate $RS gen1 ${GEN_S:-45} "$(gen_args 1)" default "" blas "$BLAS_DECODE" 1
}
echo "done at $SECONDS s"
(cd $OUT && tar czf s37b.tgz s37b && rm -rf s37b)
