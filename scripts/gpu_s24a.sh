#!/usr/bin/env bash
# Written in session 23 (no device was lent then) for the next session's first call: H100 or
# H200 (nothing here needs Vulkan), full pack of `main` from scripts/build_gpu_bins.sh in .gpu,
# and .gl; carry both. ~560 s. Correctness jobs side by side with CubeCL's minimal autotune
# (the checks compare kernels with their composed fallback or the fixtures; autotune only picks
# among correct matmuls, and compiling every candidate kept the kernels test from reporting in
# sessions 20-22):
#   kernels-bf16     — the kernels test on cuda bf16, now also under `BlasOrdering::Queued`
#                      (it fails if no product was queued);
#   parity-bf16      — issue 5: the whole fixture suite on cuda bf16 (session 22 reached 6 of 9
#                      cases and no probe after the tiles fix);
#   parity-queued    — the same with every product on cuBLAS, queued for CubeCL's device thread
#                      (PHI3V_CUBLAS_ORDER=queued PHI3V_SKINNY_MAX_ROWS=0 PHI3V_BLAS_MIN_ROWS=1);
#   engine-queued    — the engine tests (concurrent requests equal their solo runs, small pool,
#                      preemption) on cuda f32 with the same settings;
#   plugin-ops-half  — issue 9: the op checks through the reference CUDA plugin in f16 and bf16;
#   iluvatar-f16     — issue 9: the whole fixture suite through the Iluvatar shim in stand-in mode;
# then, on the quiet GPU, the image encode at num_crops 16 with CLIP's `scores` in one 256 MiB
# chunk (session 22's prediction: ~28 ms, from 41.4) and with the 4,2,2 tiles (session 22's
# default for the vision tower) in the same call.
source scripts/gpu_env.sh
source scripts/gpu_cublas.sh
RS=$OUT/s24a; mkdir -p $RS
IL=$B/libphi3v_plugin_iluvatar.so; PL=$B/libphi3v_plugin_cuda.so
QUEUED=(PHI3V_CUBLAS_ORDER=queued PHI3V_SKINNY_MAX_ROWS=0 PHI3V_BLAS_MIN_ROWS=1)
export PHI3V_PLUGIN_KERNEL_DIR=$W/failed-kernels
export JOB_AUTOTUNE_LEVEL=minimal LIMIT=${JOBS_S:-430}
job kernels-bf16 env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels --nocapture
job parity-bf16 $B/phi3v-parity --device cuda --dtype bf16
job parity-queued env "${QUEUED[@]}" $B/phi3v-parity --device cuda --dtype bf16
job engine-queued env "${QUEUED[@]}" PHI3V_TEST_DEVICES=cuda:0:f32 $B/engine --nocapture
job plugin-ops-half nice -n 5 $B/phi3v-plugin-conformance --device plugin:$PL:0 --ops-only --dtypes f16,bf16
job iluvatar-f16 env PHI3V_COREX_STANDIN=1 nice -n 5 $B/phi3v-parity --device plugin:$IL:0 --dtype f16
wait; collect; cp /tmp/res/* $RS/ 2>/dev/null
echo "=== kernels-bf16"; grep -hE "test result|FAIL|panicked|rc=|blas_matmul:" $W/kernels-bf16/out.txt $W/kernels-bf16/err.txt | cut -c1-220 | tail -20
grep -h " s  ran " $W/kernels-bf16/err.txt $W/kernels-bf16/out.txt | tail -3 | cut -c1-200
for n in parity-bf16 parity-queued iluvatar-f16; do
  echo "=== $n: $(tail -n1 $W/$n/out.txt)"; grep -E "^\| [a-z]|probe" $W/$n/out.txt | cut -c1-200 | tail -14; grep -v "^\s*$" $W/$n/err.txt | tail -3 | cut -c1-200
done
echo "=== engine-queued"; grep -hE "test result|FAIL|panicked|rc=|^test " $W/engine-queued/out.txt | cut -c1-200 | tail -12
echo "=== plugin-ops-half"; grep -E "FAIL|op checks pass|CONFORMANT|rc=" $W/plugin-ops-half/out.txt | cut -c1-200 | tail -12
ls $PHI3V_PLUGIN_KERNEL_DIR 2>/dev/null | head; [ -d $PHI3V_PLUGIN_KERNEL_DIR ] && cp -r $PHI3V_PLUGIN_KERNEL_DIR $RS/
timed_folders s24a-img; cd $D
IMG="--scenarios images --images 1344x1344 --num-crops 16 --warmup 1 --runs 5"
IMG_PARTS=("img::${IMG_S:-100}:$IMG")
# IMG_TILES=0: `scores` only (less device time).
[ "${IMG_TILES:-1}" != 0 ] && IMG_PARTS+=("img-tiles:PHI3V_FLASH_ATTENTION=4,2,2:${IMG_S:-100}:$IMG")
bench_parts $RS "${IMG_PARTS[@]}"
cd $R
(cd $OUT && tar czf s24a.tgz s24a s24a-img && rm -rf s24a s24a-img)
