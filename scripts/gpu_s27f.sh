#!/usr/bin/env bash
# Session 27, call 6 (H100; the pack of 847eebc with the kernels test of the last commit as
# .gpu/bin/kernels.xz; carry .gpu and .gl). ~200 s: the tensor-core products test, now also
# against the CPU's f32 product (one output rounding), on cuda bf16 and f16 side by side.
source scripts/gpu_env.sh
timed_folders s27f
cd $R
for dt in bf16 f16; do LIMIT=${TEST_S:-280} job mma-$dt env PHI3V_TEST_DEVICES=cuda:0:$dt $B/kernels tensor_core --nocapture; done
wait; collect; cp /tmp/res/mma-* $RS/ 2>/dev/null
for dt in bf16 f16; do echo "=== mma-$dt"; grep -hE "tensor-core|test result|panicked|FAIL|rc=|epilogue 2, staged true|8192\] · \[8192, 128\], epilogue 1, staged false" $W/mma-$dt/out.txt $W/mma-$dt/err.txt | cut -c1-230 | head -10; done
(cd $OUT && tar czf s27f.tgz s27f && rm -rf s27f)
