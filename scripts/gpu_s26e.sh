#!/usr/bin/env bash
# Session 26, call 5 (H100; the pack of 24454aa in .gpu; carry .gpu and .gl). ~420 s, one
# process at a time on the quiet GPU:
#   1. `bench attention` bf16: `scores` against the padded `mma` kernel, then `mma` with its
#      staging in single values (PHI3V_KERNELS_OFF=vector_loads: lanes store neighbouring values,
#      where 16-byte vectors put each store's lanes 16 bytes apart); SDPA beside them;
#   2. issue 8's sweep, 1 → 256 parallel requests, engine and static (the engine's pool now in
#      persistent memory and leaving 20 % of the device to its steps; ${SWEEP_S:-260} s),
#      nvidia-smi's memory.used every 0.5 s;
#   3. the bf16 fixture suite under PHI3V_FLASH_ATTENTION=mma (the padded kernel against the
#      reference; ${PAR_S:-120} s).
source scripts/gpu_env.sh
timed_folders s26e
cd $D
SHAPES="1,32,1024,1024,96,causal;1,32,4096,4096,96,causal;17,16,577,577,64"
for part in "att:" "att-single:PHI3V_KERNELS_OFF=vector_loads"; do
  name=${part%%:*}; vars=${part#*:}; flash="mma"; [ $name = att ] && flash="scores;mma"
  env $vars timeout 40 $B/phi3v bench attention --device cuda --dtype bf16 --flash "$flash" --shapes "$SHAPES" --warmup 2 --runs 10 --out $RS/$name.json > $RS/$name.log 2>&1
  echo "=== $name ${vars:-defaults} rc=$?"; grep "^| [0-9]" $RS/$name.log | cut -c1-200
done
timeout 40 python3 $R/bench/peer_attention.py --dtype bf16 --shapes "$SHAPES" --out $RS/peer-att.json 2>&1 | tail -4
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -lms 500 > $RS/smi-sweep.csv & SMI=$!
bench_parts $RS "sweep::${SWEEP_S:-260}:--scenarios generation --shapes 1024x128 --warmup 1 --runs 5 --generation-runs 1 --parallel 1,10,64,128,256 --batching engine,static"
kill $SMI; echo "peak memory.used: $(cut -d, -f2 $RS/smi-sweep.csv | sort -n | tail -1)"
grep "^generation\|pool capped" $RS/sweep.log | cut -c1-220
cd $R
LIMIT=${PAR_S:-120} job parity-mma env PHI3V_FLASH_ATTENTION=mma $B/phi3v-parity --device cuda --dtype bf16
wait; collect; cp /tmp/res/parity-mma.* $RS/ 2>/dev/null
echo "=== parity-mma: $(tail -n1 $W/parity-mma/out.txt)"; grep -E "^\| [a-z]|probe" $W/parity-mma/out.txt | cut -c1-200 | tail -14
(cd $OUT && tar czf s26e.tgz s26e && rm -rf s26e)
