#!/usr/bin/env bash
# Diagnostic call for a kernel that is wrong on CUDA and right on lavapipe: the kernels test on
# cuda f32 (1) with CubeCL's compilation log at level "full" (every kernel's CUDA source, into
# $OUT/compile.log.gz) and (2) with CubeCL's bounds-check mode "validate" (unchecked launches are
# checked for out-of-bounds accesses). Usage (device tool, carry .gpu): bash scripts/gpu_kernel_source.sh
source scripts/gpu_env.sh
D=/tmp/diag; mkdir -p $D/source $D/validate
printf '[compilation.logger]\nlevel = "full"\nfile = "%s/compile.log"\nappend = true\n' $D > $D/source/cubecl.toml
printf '[compilation]\ncheck_mode = "validate"\n' > $D/validate/cubecl.toml
# Both at once (device time is short): T seconds each.
T=${1:-75}
( cd $D/source && PHI3V_TEST_DEVICES=cuda:f32 timeout $T $B/kernels --nocapture > $D/source.txt 2>&1; echo "rc=$?" >> $D/source.txt ) &
( cd $D/validate && PHI3V_TEST_DEVICES=cuda:f32 timeout $T $B/kernels --nocapture > $D/validate.txt 2>&1; echo "rc=$?" >> $D/validate.txt ) &
wait
grep -c . $D/compile.log; gzip -c $D/compile.log > $OUT/compile.log.gz
cp $D/source.txt $D/validate.txt $OUT/; grep -v "^\s*$" $D/validate.txt | grep -iv "done:" | tail -40 | cut -c1-300
