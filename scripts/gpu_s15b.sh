#!/usr/bin/env bash
# Session 15, second device call (carry .gpu with call 1's cache part and phi3v-prof.xz):
#   background (compilation-bound, GPU nearly idle):
#     kernels — the kernels test on cuda bf16 and f32 (flash tilings, SkinnyTuning shapes);
#     kcache  — `phi3v --kernel-cache DIR generate` (tiny checkpoint, bf16) twice in fresh
#               processes from /tmp (no cubecl.toml above): the second run should skip NVRTC;
#   foreground (timing), one after the other:
#     bd   — breakdown at b=1 and b=64 after 1024 tokens (the products at 64 rows as one
#            [rows, d_in] product now) and prefill 1024 with flash tilings (refusals printed),
#            sampled by the host profiler when .gpu/bin/phi3v-prof exists;
#     img0, img — image encode 336² and 1344² at num_crops 16 with Burn's attention, then with
#            the sweep's best tiling (if one beats Burn's by 10 %), then the peer's images;
#     s64  — static batch of 64 parallel requests, 1024 → 128 (best tiling).
# Returns s15b.tgz and the kernel caches for the next call.
# Usage (device tool): bash scripts/gpu_s15b.sh   (about 520 s)
source scripts/gpu_env.sh
D=$W/bench; mkdir -p $D; R15=$OUT/s15b; mkdir -p $R15
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > $D/cubecl.toml
[ -f .gpu/cache.tgz ] && tar xzf .gpu/cache.tgz -C $D
LIMIT=${KERNELS_S:-450} job kernels env PHI3V_TEST_DEVICES=cuda:0:bf16,cuda:0:f32 $B/kernels --nocapture
( mkdir -p /tmp/kc-run && cd /tmp/kc-run
  for n in 1 2; do
    s=$(date +%s)
    timeout ${KC_LIMIT:-400} $B/phi3v --kernel-cache /tmp/kc-cache "${GEN_TINY[@]}" --device cuda --dtype bf16 > $R15/kc-run$n.json 2> $R15/kc-run$n.err
    echo "kcache run $n rc=$? $(( $(date +%s) - s )) s" >> $R15/kc.txt
  done
  du -sh /tmp/kc-cache >> $R15/kc.txt ) &
PHI=$B/phi3v; PROF=""
[ -x $B/phi3v-prof ] && PHI=$B/phi3v-prof && PROF="--profile $R15/profile --profile-steps 200"
cd $D
timeout ${BD_S:-170} $PHI bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --decode-batches 1,64 --context 1024 \
  --prefill 1024 --flash "${FLASH:-burn;4,1,1;4,2,2;8,1,2}" --warmup 2 --runs 10 $PROF --out $R15/bd > $R15/bd.log 2>&1
echo "=== bd rc=$?"; grep -v "^\s*$" $R15/bd.log | grep -v "^|" | cut -c1-200
grep "whole step\|^## \|Host:" $R15/bd/breakdown.md
for f in $R15/profile/*.top.md; do [ -f "$f" ] && { echo "=== $f"; head -30 "$f" | cut -c1-180; }; done
# The fastest tiling of the sweep, if it beats Burn's attention by 10 %: the later parts run with it.
BEST=$(python3 - $R15/bd.log <<'PY'
import re, sys
t = {m.group(1): float(m.group(2)) for m in re.finditer(r"attention with flash (.+?): ([0-9.]+) µs", open(sys.argv[1]).read())}
burn = t.pop("Burn", None)
tiles = {k: v for k, v in t.items() if k.startswith("Tiles")}
if burn and tiles:
    k = min(tiles, key=tiles.get)
    if tiles[k] < 0.9 * burn:
        print(",".join(re.findall(r"\d+", k)))
PY
)
echo "best flash tiling: ${BEST:-none, Burn attention}" | tee $R15/best.txt
FA_BEST=${BEST:-burn}
for part in "img0:burn:${IMG_S:-80}:--scenarios images --images 336x336,1344x1344 --num-crops 16 --warmup 1 --runs 5" \
            "img:$FA_BEST:${IMG_S:-80}:--scenarios images --images 336x336,1344x1344 --num-crops 16 --warmup 1 --runs 5" \
            "s64:$FA_BEST:${S64_S:-100}:--scenarios generation --parallel 64 --batching static --shapes 1024x128 --warmup 1 --generation-runs 1"; do
  name=${part%%:*}; rest=${part#*:}; fa=${rest%%:*}; rest=${rest#*:}; secs=${rest%%:*}; args=${rest#*:}
  s=$(date +%s); PHI3V_FLASH_ATTENTION=$fa timeout $secs $B/phi3v bench run --preset phi3v-128k --device cuda $args --out $R15/$name > $R15/$name.log 2>&1
  echo "=== $name (flash $fa) rc=$? $(( $(date +%s) - s )) s"; grep -v "^\s*$" $R15/$name.log | tail -6 | cut -c1-220
done
cd $R
timeout ${PEER_S:-70} python3 bench/peer_torch.py --preset cli/presets/phi3v-128k.json --out $R15/peer-img.json --ours $R15/img/results.json \
  --scenarios images --warmup 1 --runs 5 2>&1 | grep -v Warning | tail -8
[ -f $R15/img/results.json ] && [ -f $R15/peer-img.json ] && $B/phi3v bench compare $R15/img/results.json $R15/peer-img.json | tee $R15/compare-img.md
wait
cat $R15/kc.txt
python3 -c 'import json,sys; a,b=[json.load(open(f))["token_ids"] for f in sys.argv[1:]]; print("kcache same tokens:", a==b, a)' $R15/kc-run1.json $R15/kc-run2.json
collect; cp /tmp/res/kernels.* $R15/ 2>/dev/null; TAIL=30 show kernels | grep -v "^ok\|^  ok" | tail -40
(cd $OUT && tar czf s15b.tgz s15b && rm -rf s15b)
rm -f .gpu/cache.tgz; tar czf - -C $D . | split -b 15M - $OUT/cache.tgz.part-
ls -la $OUT
