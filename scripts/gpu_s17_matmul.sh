#!/usr/bin/env bash
# Session 17 — written, not run (no device machine was lent this session): the tensor-core
# matmul tilings of `Kernels::tiled_matmul` (issue 10, lever 5) against Burn's autotuned matmul
# and cuBLAS, then the best tiling end to end, for one row class:
#   ROWS=many (default): prefill and vision-tower products (PHI3V_MATMUL);
#   ROWS=few: a static decode step of 64 sequences (PHI3V_MATMUL_FEW).
# Build first: TESTS="kernels engine" bash scripts/build_gpu_slim.sh   (carry [".gpu"])
#   background (compilation-bound; KERNELS=0 skips it):
#     kernels-bf16 — the kernels test on cuda bf16: the tiled products (5 tilings × 3 awkward
#       shapes) and `linear` with bias under a tiling in both row classes, against Burn's
#       matmul, beside every other kernel check;
#   foreground (timing), one after the other:
#     peer  — bench/peer_matmul.py: cuBLAS (`F.linear`) at the default products;
#     sweep — `phi3v bench matmul` over 7 routine/instruction kinds × the class's 10 tilings at
#             two products (many: prefill gate_up_proj, CLIP fc1; few: gate_up_proj and
#             down_proj at 64 rows), one process per product and routine;
#     top   — the TOP best tilings (geometric mean of the speed-up over Burn's; refused and
#             wrong outputs excluded) at every default product, beside the peer;
#     ten   — few only: 10-row products, the model's skinny kernel vs Burn's vs the best;
#     e2e   — many: prefill 1024 and image encode at num_crops 16; few: 64 parallel
#             static requests 1024 → 128; Burn's matmul vs the best tiling (FLASH=scores adds
#             PHI3V_FLASH_ATTENTION=scores to both); few also 10 parallel, the skinny kernel
#             vs the best tiling with PHI3V_SKINNY_MAX_ROWS=3 (TEN_E2E=0 skips, TEN_E2E_S).
# Returns s17-<rows>.tgz and the kernel caches. Usage (device tool):
#   [ROWS=few] bash scripts/gpu_s17_matmul.sh   (~560 s; WARM_S and ROUTINE_S per product and routine, PEER_S, TOP_S, E2E_S, TESTS_S)
# DEVICE (cuda), DTYPE (bf16) and ROUTINES (the 7 kinds below) choose another device: e.g.
#   DEVICE=wgpu DTYPE=f16 KERNELS=0 ROUTINES="double ordered specialized simple" (SPIR-V's
#   cooperative matrices; no TMA and no `mma` instruction there). The peer runs on CUDA only.
source scripts/gpu_env.sh
ROWS=${ROWS:-many}
DEVICE=${DEVICE:-cuda}; DTYPE=${DTYPE:-bf16}
ROUTINES=${ROUTINES:-"specialized_tma double_tma simple_tma double ordered specialized-mma double-mma"}
TAG=s17-$ROWS; [ "$DEVICE" != cuda ] && TAG=$TAG-$DEVICE
D=$W/bench; mkdir -p $D; RS=$OUT/$TAG; mkdir -p $RS
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > $D/cubecl.toml
[ -f .gpu/cache.tgz ] && tar xzf .gpu/cache.tgz -C $D
[ "${KERNELS:-1}" != 0 ] && LIMIT=${TESTS_S:-480} job kernels-bf16 env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels --nocapture
if [ "$DEVICE" = cuda ]; then
  s=$(date +%s)
  timeout ${PEER_S:-45} python3 bench/peer_matmul.py --out $RS/peer.json > $RS/peer.log 2>&1
  echo "=== peer rc=$? $(( $(date +%s) - s )) s"; grep -v Warning $RS/peer.log | tail -12
fi
if [ "$ROWS" = few ]; then
  # 64 rows fit one cube's rows: cubes along n only, so narrow blocks (16–64 columns) give the
  # SMs enough cubes; deep k steps keep loads in flight.
  PRODUCTS=${SWEEP_PRODUCTS:-"64,3072,16384 64,8192,3072"}
  TILINGS="1,2,4:4,1 1,4,4:4,1 1,1,4:4,1 1,2,8:4,1 1,2,2:4,1 2,2,4:2,1 4,2,4:1,1 1,8,2:4,1 1,2,4:4,2 2,8,2:2,1"
  VAR=PHI3V_MATMUL_FEW
  E2E="--scenarios generation --shapes 1024x128 --parallel 64 --batching static --warmup 1 --generation-runs 1"
else
  # The selector's inferred tilings for bf16 (8 planes: 1 or 2 tile rows each, the whole
  # 128-wide n), then 2-d stages whose planes hold square 64×64 or 32×64 blocks.
  PRODUCTS=${SWEEP_PRODUCTS:-"1024,3072,16384 9809,1024,4096"}
  TILINGS="1,8,2:8,1 2,8,2:4,1 4,4,2:2,2 4,4,4:2,2 4,4,2:2,4 4,4,2:4,2 2,4,2:4,2 4,2,2:2,4 2,8,2:4,2 2,4,4:4,2"
  VAR=PHI3V_MATMUL
  E2E="--scenarios prefill,images --prompt-lengths 1024 --prefill-batches 1 --images 1344x1344 --num-crops 16 --warmup 1 --runs 5"
fi
cd $D
# One process per product and routine (Burn's matmul timed again in each: its autotune result
# is cached), so that a tiling which takes the process down (a kernel that does not compile
# may panic on CubeCL's device thread) costs only its routine's other tilings.
for p in $PRODUCTS; do
  s=$(date +%s)
  # Burn's matmul alone first: its autotune (tens of candidates to compile) lands in the cache.
  timeout ${WARM_S:-60} $B/phi3v bench matmul --device $DEVICE --dtype $DTYPE --shapes $p --tilings burn --warmup 1 --runs 2 > /dev/null 2>&1
  for r in $ROUTINES; do
    # The instruction pinned to 16×16×16, so that a tiling means the same blocks at every
    # product (cubek-matmul picks 8×32 or 32×8 for lopsided products otherwise).
    SWEEP="burn"; for t in $TILINGS; do SWEEP="$SWEEP;$r:$t:16,16,16"; done
    timeout ${ROUTINE_S:-14} $B/phi3v bench matmul --device $DEVICE --dtype $DTYPE --shapes $p --tilings "$SWEEP" --warmup 2 --runs 10 \
      > $RS/sweep-$p-$r.md 2> $RS/sweep-$p-$r.log || echo "  $p $r: rc=$?"
  done
  echo "=== sweep $p $(( $(date +%s) - s )) s, $(cat $RS/sweep-$p-*.log | grep -c "µs") timings"
done
# The best tilings: the geometric mean over the swept products of Burn's µs / the tiling's
# (Burn's from the same process), outputs within 2e-2 of Burn's (read from the logs, which keep
# what a process that timed out or died did).
BEST=$(python3 - "$RS" "${TOP:-4}" <<'PY'
import glob, math, re, sys
rs, top = sys.argv[1], int(sys.argv[2])
speed = {}
for f in glob.glob(rs + "/sweep-*.log"):
    # "Product { rows: R, d_in: I, d_out: O } CHOICE: US µs, rel. diff D[ (refused…)]"
    rows = [m.groups() for m in re.finditer(r"^Product \{ rows: (\d+), d_in: (\d+), d_out: (\d+) \} (\S+): ([\d.]+) µs, rel. diff (\S+?)( \(refused.*)?$", open(f).read(), re.M)]
    burn = [float(r[4]) for r in rows if r[3] == "burn"]
    for r in rows:
        if r[3] == "burn" or r[6] or not burn or not float(r[5]) <= 2e-2:
            continue
        speed.setdefault(r[3], []).append(burn[0] / float(r[4]))
n = max((len(v) for v in speed.values()), default=0)
ranked = sorted(((math.exp(sum(map(math.log, v)) / len(v)), k) for k, v in speed.items() if len(v) == n), reverse=True)
for g, k in ranked[:10]:
    print(f"{g:.2f} {k}", file=sys.stderr)
print(";".join(k for _, k in ranked[:top]))
PY
)
echo "=== best: ${BEST:-none}"
if [ -n "$BEST" ]; then
  s=$(date +%s)
  PEER=(); [ -s $RS/peer.json ] && PEER=(--peer $RS/peer.json)
  # TOP_SHAPES: fewer products than the default's 12 (each compiles and tunes Burn's matmul).
  [ -n "${TOP_SHAPES:-}" ] && PEER+=(--shapes "$TOP_SHAPES")
  timeout ${TOP_S:-70} $B/phi3v bench matmul --device $DEVICE --dtype $DTYPE --tilings "burn;$BEST" --warmup 3 --runs 20 \
    "${PEER[@]}" --out $RS/top.json > $RS/top.md 2> $RS/top.log
  echo "=== top rc=$? $(( $(date +%s) - s )) s"; cat $RS/top.md
  if [ "$ROWS" = few ]; then
    # A decode step of 10 sequences: the model's CUDA-core skinny kernel (`model`) against
    # Burn's and the best tensor-core tilings (this says whether a tiling should take them:
    # PHI3V_SKINNY_MAX_ROWS below 10 sends them to PHI3V_MATMUL_FEW, timed end to end below).
    s=$(date +%s)
    timeout ${TEN_S:-40} $B/phi3v bench matmul --device $DEVICE --dtype $DTYPE --shapes "10,3072,9216;10,3072,3072;10,3072,16384;10,8192,3072" \
      --tilings "model;burn;$BEST" --warmup 3 --runs 20 --out $RS/ten.json > $RS/ten.md 2> $RS/ten.log
    echo "=== ten rows rc=$? $(( $(date +%s) - s )) s"; cat $RS/ten.md
  fi
  FIRST=${BEST%%;*}
  [ "${FLASH:-burn}" = scores ] && export PHI3V_FLASH_ATTENTION=scores
  for part in "e2e-burn:burn" "e2e-tiled:$FIRST"; do
    name=${part%%:*}; s=$(date +%s)
    env $VAR=${part#*:} timeout ${E2E_S:-70} $B/phi3v bench run --preset phi3v-128k --device $DEVICE --dtype $DTYPE $E2E --out $RS/$name > $RS/$name.log 2>&1
    echo "=== $name ($VAR=${part#*:}) rc=$? $(( $(date +%s) - s )) s"; grep -v "^\s*$" $RS/$name.log | tail -8 | cut -c1-200
  done
  if [ "$ROWS" = few ] && [ "${TEN_E2E:-1}" != 0 ]; then
    # 10 parallel static requests (issue 10's second goal): the skinny kernel (default) against
    # the best tiling with the skinny kernel's rows lowered to 3 (PHI3V_SKINNY_MAX_ROWS), so
    # that the 10-row products take PHI3V_MATMUL_FEW.
    for part in "ten-skinny:16:burn" "ten-tiled:3:$FIRST"; do
      name=${part%%:*}; rest=${part#*:}; s=$(date +%s)
      env PHI3V_SKINNY_MAX_ROWS=${rest%%:*} PHI3V_MATMUL_FEW=${rest#*:} timeout ${TEN_E2E_S:-50} $B/phi3v bench run --preset phi3v-128k --device cuda \
        --scenarios generation --shapes 1024x128 --parallel 10 --batching static --warmup 1 --generation-runs 1 --out $RS/$name > $RS/$name.log 2>&1
      echo "=== $name (skinny rows ≤ ${rest%%:*}, PHI3V_MATMUL_FEW=${rest#*:}) rc=$? $(( $(date +%s) - s )) s"; grep -v "^\s*$" $RS/$name.log | tail -6 | cut -c1-200
    done
  fi
fi
cd $R
wait
collect; cp /tmp/res/kernels-* $RS/ 2>/dev/null
echo "=== kernels-bf16"; grep -E "test result|FAIL|panicked|rc=|tiled_matmul|with bias|tilings refused" $W/kernels-bf16/out.txt 2>/dev/null | cut -c1-220
(cd $OUT && tar czf $TAG.tgz $TAG && rm -rf $TAG)
[ "$DEVICE" = cuda ] && tar czf - -C $D . | split -b 15M - $OUT/cache.tgz.part-
ls -la $OUT
