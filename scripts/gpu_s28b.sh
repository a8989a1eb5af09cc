#!/usr/bin/env bash
# Session 28, call 2 (H100; the pack of edd184f in .gpu; carry .gpu and .gl). ~500 s, one process
# at a time on the quiet GPU except the two test jobs, bf16, phi3v-128k shapes:
#   1. the tensor-core products test on cuda bf16 and f16 (four ways of reading the inputs:
#      staged with 1, 2 and 4 chunks held ahead, weights from global memory with 2);
#   2. the decode breakdown at 10 rows: chunks held ahead 1 (session 27's kernel with the input
#      rows also held), 2 (default), 4; 16 planes with 2; the CUDA-core skinny kernel;
#   3. generation 1024 → 128 through the engine, 10 parallel requests: default, depth 1;
#   4. Nsight Compute: the first four `mma_linear` launches at 10 rows; the GPU time of every
#      kernel of about one batch-1 decode step (250 launches inside a generation); the decode
#      attention at 10 rows of 1024 keys.
source scripts/gpu_env.sh
timed_folders s28b
cd $R
for dt in bf16 f16; do LIMIT=${TEST_S:-240} job mma-$dt env PHI3V_TEST_DEVICES=cuda:0:$dt $B/kernels tensor_core --nocapture; done
wait; collect; cp /tmp/res/mma-* $RS/ 2>/dev/null
for dt in bf16 f16; do echo "=== mma-$dt"; grep -hE "tensor-core|test result|panicked|FAIL|rc=|\[10, 3072\] · \[3072, 1024\], epilogue 2" $W/mma-$dt/out.txt $W/mma-$dt/err.txt | cut -c1-230 | head -12
  grep -q "test result: ok" $W/mma-$dt/out.txt || grep -v "^\s*$" $W/mma-$dt/err.txt | grep -v "mma_linear \[" | tail -8 | cut -c1-300; done
cd $D
BD=(bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --no-image --decode-batches 10 --warmup 3 --runs 20)
for part in "d2:" "d1:PHI3V_MMA_LINEAR=8,64,4,1,1" "d4:PHI3V_MMA_LINEAR=8,64,4,1,4" "p16d2:PHI3V_MMA_LINEAR=16,64,4,1,2" "skinny:PHI3V_KERNELS_OFF=mma_linear"; do
  name=${part%%:*}; vars=${part#*:}
  env $vars timeout ${BD_S:-50} $B/phi3v "${BD[@]}" --out $RS/bd-$name > $RS/bd-$name.log 2>&1
  echo "=== breakdown $name (${vars:-defaults}) rc=$?"
  grep -E "proj|attention|whole" $RS/bd-$name/breakdown.md 2>/dev/null | grep -v "^#" | cut -c1-150 | head -8
done
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 5 --generation-runs 1 --batching engine --parallel 10"
TAIL=3 bench_parts $RS "gen-d2::${GEN_S:-55}:$GEN" "gen-d1:PHI3V_MMA_LINEAR=8,64,4,1,1:${GEN_S:-55}:$GEN"
grep -H "^generation" $RS/*.log | cut -c1-220
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
SECTIONS="--section SpeedOfLight --section Occupancy --section MemoryWorkloadAnalysis --section WarpStateStats --section LaunchStats --section SchedulerStats --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio"
BD1=(bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --no-image --decode-batches 10 --warmup 0 --runs 1)
ncu_report() {
  grep -E "stalled_" $1 | awk '$NF+0 > 0.5' | sed 's/smsp__average_warps_issue_stalled_//;s/_per_issue_active.ratio//' | awk '{print $1, $NF}' | paste -sd' ' | cut -c1-400
  grep -E "^  [a-z_]+.*\(|Duration|DRAM Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Grid Size|Block Limit Reg|Block Limit Shared|Warp Cycles Per Issued|No Eligible|L1/TEX Hit" $1 | sed 's/  */ /g' | cut -c1-100 | head -60
}
timeout ${NCU_S:-60} $NCU --kernel-name regex:mma_linear --launch-count 4 $SECTIONS $B/phi3v "${BD1[@]}" --out $RS/ncu-bd-mma > $RS/ncu-mma.txt 2>&1
echo "=== ncu mma_linear rc=$?"; ncu_report $RS/ncu-mma.txt
# Batch 1: every kernel of about one decode step (GPU time each), 1024 → 64 through the engine.
timeout ${TIMELINE_S:-80} $NCU --metrics gpu__time_duration.sum --csv --launch-skip ${SKIP:-3000} --launch-count 250 \
  $B/phi3v bench run --preset phi3v-128k --device cuda --dtype bf16 --scenarios generation --shapes 1024x64 --warmup 0 --runs 1 --generation-runs 1 --batching engine --parallel 1 --out $RS/tl1 > $RS/ncu-tl1.csv 2> $RS/ncu-tl1.err
echo "=== ncu timeline b=1 rc=$?"; tail -2 $RS/ncu-tl1.err
python3 - $RS/ncu-tl1.csv <<'PY'
import csv, sys, re, collections
rows = [r for r in csv.DictReader(l for l in open(sys.argv[1]) if l.startswith('"'))]
t = collections.defaultdict(lambda: [0, 0.0])
for r in rows:
    n = re.sub(r"[<(].*", "", r.get("Kernel Name", ""))[:60]; v = float(r["Metric Value"].replace(",", "")); u = r["Metric Unit"]
    v = v / 1e3 if u == "nsecond" else v * 1e3 if u == "msecond" else v
    t[n][0] += 1; t[n][1] += v
tot = sum(x[1] for x in t.values()); print(f"{len(rows)} kernels, {tot:.0f} us GPU")
for n, (c, s) in sorted(t.items(), key=lambda kv: -kv[1][1])[:25]: print(f"| {n} | {c} | {s/c:.2f} | {s:.0f} |")
PY
timeout ${NCU_S:-60} $NCU --kernel-name regex:decode_attention --launch-count 2 $SECTIONS $B/phi3v "${BD1[@]}" --out $RS/ncu-bd-att > $RS/ncu-att.txt 2>&1
echo "=== ncu decode attention rc=$?"; ncu_report $RS/ncu-att.txt
cd $R; (cd $OUT && tar czf s28b.tgz s28b && rm -rf s28b)
