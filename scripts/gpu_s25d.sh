#!/usr/bin/env bash
# Session 25's first call with the pack of the tensor-core flash kernel (`FlashAttention::Mma`,
# never run on a GPU before): H100 or H200, the full pack in .gpu and .gl; carry both. ~450 s.
#   1. on the quiet GPU: `bench attention` with `scores` (the default) then `mma`, bf16 and f16,
#      at prefill 1024 and 4096 (causal, 96-dim heads) and CLIP's 17×16×577×64: the kernel's
#      first outputs (rel_diff against `scores`) and its time;
#   2. side by side, LIMIT=${JOBS_S:-330}: gpu_s25a.sh's correctness jobs (the kernels test on cuda
#      bf16, which now checks `mma` too; the plugin's f16/bf16 op tables; the Iluvatar shim's
#      f16 two_images; cuda f16's remaining cases; the bf16 suite queued on cuBLAS) and the bf16
#      fixture suite under `PHI3V_FLASH_ATTENTION=mma`.
source scripts/gpu_env.sh
source scripts/gpu_cublas.sh
RS=$OUT/s25d; mkdir -p $RS
IL=$B/libphi3v_plugin_iluvatar.so; PL=$B/libphi3v_plugin_cuda.so
QUEUED=(PHI3V_CUBLAS_ORDER=queued PHI3V_SKINNY_MAX_ROWS=0 PHI3V_BLAS_MIN_ROWS=1)
SHAPES="1,32,1024,1024,96,causal;1,32,4096,4096,96,causal;17,16,577,577,64"
mkdir -p $W/att && cd $W/att
for dt in bf16 f16; do
  s=$(date +%s)
  timeout ${ATT_S:-90} $B/phi3v bench attention --device cuda --dtype $dt --flash "scores;mma" --shapes "$SHAPES" --warmup 2 --runs 10 --out $RS/att-$dt.json > $RS/att-$dt.log 2>&1
  echo "=== attention $dt rc=$? $(( $(date +%s) - s )) s"; grep -v "^\s*$" $RS/att-$dt.log | grep -v "^kernel cache" | tail -14 | cut -c1-220
done
cd $R
export PHI3V_PLUGIN_KERNEL_DIR=$W/failed-kernels
export JOB_AUTOTUNE_LEVEL=minimal LIMIT=${JOBS_S:-330}
job kernels-bf16 env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels --nocapture
job plugin-ops-half nice -n 5 $B/phi3v-plugin-conformance --device plugin:$PL:0 --ops-only --dtypes f16,bf16
job iluvatar-rest env PHI3V_COREX_STANDIN=1 nice -n 5 $B/phi3v-parity --device plugin:$IL:0 --dtype f16 --cases two_images
job cuda-f16-rest $B/phi3v-parity --device cuda --dtype f16 --cases tiny_rgba_upscaled,two_images
job parity-queued env "${QUEUED[@]}" $B/phi3v-parity --device cuda --dtype bf16
job parity-mma env PHI3V_FLASH_ATTENTION=mma $B/phi3v-parity --device cuda --dtype bf16
wait; collect; cp /tmp/res/* $RS/ 2>/dev/null
echo "=== kernels-bf16"; grep -hE "test result|FAIL|panicked|rc=|mma" $W/kernels-bf16/out.txt $W/kernels-bf16/err.txt | cut -c1-220 | tail -24
echo "checks compared: $(grep -c ' vs composed' $W/kernels-bf16/err.txt)"
for n in iluvatar-rest cuda-f16-rest parity-queued parity-mma; do
  echo "=== $n: $(tail -n1 $W/$n/out.txt)"; grep -E "^\| [a-z]|probe" $W/$n/out.txt | cut -c1-200 | tail -14; grep -v "^\s*$" $W/$n/err.txt | tail -3 | cut -c1-200
done
echo "=== plugin-ops-half"; grep -E "FAIL|op checks pass|CONFORMANT|rc=" $W/plugin-ops-half/out.txt | cut -c1-200 | tail -12
ls $PHI3V_PLUGIN_KERNEL_DIR 2>/dev/null | head; [ -d $PHI3V_PLUGIN_KERNEL_DIR ] && cp -r $PHI3V_PLUGIN_KERNEL_DIR $RS/
(cd $OUT && tar czf s25d.tgz s25d && rm -rf s25d)
