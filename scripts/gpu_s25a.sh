#!/usr/bin/env bash
# Written in session 24 for the next session's first call: H100 or H200 (nothing here needs
# Vulkan), a full pack of `main` (scripts/build_gpu_bins.sh) in .gpu, and .gl; carry both.
# ~500 s. Correctness jobs side by side with CubeCL's minimal autotune, LIMIT=${JOBS_S:-360}:
#   kernels-bf16     — the kernels test on cuda bf16; it now compares each check with the CPU
#                      witness as it runs, so a run cut short still reports what it reached;
#   plugin-ops-half  — issue 9: the reference plugin's op checks in f16 and bf16 (session 24's
#                      run panicked at a TMA tiling; now refused before launch, and a device
#                      error is a FAIL row);
#   iluvatar-rest    — issue 9: the Iluvatar shim's f16 cases session 24 did not reach, and the
#                      vision probes;
#   cuda-f16-rest    — issue 5: the cuda f16 cases session 22 did not reach, and the probes;
#   parity-queued    — the bf16 suite with every product queued on cuBLAS (session 24's fix:
#                      `scores` on cuBLAS under `Queued` too);
# then, on the quiet GPU, the image encode at num_crops 16 with the vector loads and without
# (`PHI3V_KERNELS_OFF=vector_loads`), with prefill 1024 and 4096 in the same
# processes (docs/kernels.md session 24's prediction).
source scripts/gpu_env.sh
source scripts/gpu_cublas.sh
RS=$OUT/s25a; mkdir -p $RS
IL=$B/libphi3v_plugin_iluvatar.so; PL=$B/libphi3v_plugin_cuda.so
QUEUED=(PHI3V_CUBLAS_ORDER=queued PHI3V_SKINNY_MAX_ROWS=0 PHI3V_BLAS_MIN_ROWS=1)
export PHI3V_PLUGIN_KERNEL_DIR=$W/failed-kernels
export JOB_AUTOTUNE_LEVEL=minimal LIMIT=${JOBS_S:-360}
job kernels-bf16 env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels --nocapture
job plugin-ops-half nice -n 5 $B/phi3v-plugin-conformance --device plugin:$PL:0 --ops-only --dtypes f16,bf16
job iluvatar-rest env PHI3V_COREX_STANDIN=1 nice -n 5 $B/phi3v-parity --device plugin:$IL:0 --dtype f16 --cases two_images
job cuda-f16-rest $B/phi3v-parity --device cuda --dtype f16 --cases tiny_rgba_upscaled,two_images
job parity-queued env "${QUEUED[@]}" $B/phi3v-parity --device cuda --dtype bf16
wait; collect; cp /tmp/res/* $RS/ 2>/dev/null
echo "=== kernels-bf16"; grep -hE "test result|FAIL|panicked|rc=|blas_matmul:" $W/kernels-bf16/out.txt $W/kernels-bf16/err.txt | cut -c1-220 | tail -20
echo "checks compared: $(grep -c ' vs composed' $W/kernels-bf16/err.txt)"
for n in iluvatar-rest cuda-f16-rest parity-queued; do
  echo "=== $n: $(tail -n1 $W/$n/out.txt)"; grep -E "^\| [a-z]|probe" $W/$n/out.txt | cut -c1-200 | tail -14; grep -v "^\s*$" $W/$n/err.txt | tail -3 | cut -c1-200
done
echo "=== plugin-ops-half"; grep -E "FAIL|op checks pass|CONFORMANT|rc=" $W/plugin-ops-half/out.txt | cut -c1-200 | tail -12
ls $PHI3V_PLUGIN_KERNEL_DIR 2>/dev/null | head; [ -d $PHI3V_PLUGIN_KERNEL_DIR ] && cp -r $PHI3V_PLUGIN_KERNEL_DIR $RS/
timed_folders s25a-ab; cd $D
AB="--scenarios images,prefill --images 1344x1344 --num-crops 16 --prompt-lengths 1024,4096 --prefill-batches 1 --warmup 1 --runs 5"
bench_parts $RS "vectors::${AB_S:-80}:$AB" "scalar:PHI3V_KERNELS_OFF=vector_loads:${AB_S:-80}:$AB"
cd $R
(cd $OUT && tar czf s25a.tgz s25a s25a-ab && rm -rf s25a s25a-ab)
