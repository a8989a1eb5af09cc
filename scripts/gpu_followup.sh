#!/usr/bin/env bash
# Follow-ups of gpu_check.sh's run on 2026-12-02 (H200), as parallel jobs:
#  - engine-cuda-f32: the engine's concurrency test (issue 8) on CUDA f32 (gpu_check.sh also
#    tried bf16 and wgpu, which did not finish in 400 s next to a dozen other jobs);
#  - long-composed: long_context_two_images (the one case failing on every GPU backend, f32) with
#    attention composed from matmul and softmax instead of the flash kernel autotune picks above
#    4096 queries: does the flash kernel cause it?
#  - parity-cuda-bf16 / generate-cuda-bf16 with autotune level `minimal` (fewer candidate kernels
#    to compile; bf16 did not finish within 400 s at the default level).
# Binaries in .gpu/bin: matmul_k_stages (tests/tests/matmul_k_stages.rs, release, cuda), engine (tests/tests/engine.rs, release, cuda), phi3v-parity-plugin or
# phi3v-parity, phi3v. Usage (device tool, carry .gpu): bash scripts/gpu_followup.sh [seconds]
source scripts/gpu_env.sh
LIMIT=${1:-300}; M=$R/tests/fixtures/models; I=$R/tests/fixtures/images
P=$B/phi3v-parity; [ -x $B/phi3v-parity-plugin ] && P=$B/phi3v-parity-plugin
# The k-stage test in bf16: the tensor-core kernel families (cmma, mma) that f32 does not use.
[ -x $B/matmul_k_stages ] && job kernels-bf16 env PHI3V_TEST_DEVICES=cuda:bf16 $B/matmul_k_stages tiled --nocapture
[ -x $B/engine ] && job engine-cuda-f32 env PHI3V_TEST_DEVICES=cuda:f32 $B/engine concurrent --nocapture
job long-composed env PHI3V_COMPOSED_ATTENTION=1 $P --device cuda --dtype f32 --cases long_context_two_images
JOB_AUTOTUNE_LEVEL=minimal job parity-cuda-bf16 $P --device cuda --dtype bf16
JOB_AUTOTUNE_LEVEL=minimal job generate-cuda-bf16 $B/phi3v generate --model $M/phi3v-tiny --device cuda --dtype bf16 --image $I/astronaut.png --prompt "What is the content of this image in details?" --max-new-tokens 10 --json
wait
TAIL=8 show kernels-bf16 engine-cuda-f32 long-composed parity-cuda-bf16 generate-cuda-bf16 | cut -c1-400
mkdir -p /tmp/fres; for d in $W/*/; do n=$(basename $d); cp $d/out.txt /tmp/fres/$n.txt 2>/dev/null; cp $d/err.txt /tmp/fres/$n.err 2>/dev/null; done
tar czf $OUT/followup.tgz -C /tmp/fres .
