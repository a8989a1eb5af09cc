#!/usr/bin/env bash
# Session 15, first device call (carry .gpu, with session 14's call-2 cache part), one part
# after the other, each alone on the machine:
#   bd  — `phi3v bench breakdown`: decode at 64 static rows after 1024 tokens (where the 155 ms
#         step of the 64-parallel static batch goes) and prefill 1024 with the attention timed
#         under each flash choice (Burn's, the unit kernel, cubek's tensor-core routine at
#         tilings Burn's autotune does not try): issue 10;
#   eng — the serving engine at 1 and 10 parallel requests, 1024 → 128 (issues 6 and 8);
#   pfx — 10 parallel requests sharing a 768-token prefix, the engine with and without prefix
#         caching (issue 8).
# Returns s15a.tgz (logs, cards, JSON) and the kernel caches for the next call.
# Usage (device tool): bash scripts/gpu_s15a.sh   (about 450 s)
source scripts/gpu_env.sh
D=$W/bench; mkdir -p $D; R15=$OUT/s15a; mkdir -p $R15
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > $D/cubecl.toml
[ -f .gpu/cache.tgz ] && tar xzf .gpu/cache.tgz -C $D
FLASH=${FLASH:-"burn;unit;4,1,1;4,1,2;4,1,4;8,1,2;8,1,4;4,2,2;2,2,4"}
cd $D
timeout ${BD_S:-170} $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --decode-batches 64 --context 1024 \
  --prefill 1024 --flash "$FLASH" --warmup 2 --runs 10 --out $R15/bd > $R15/bd.log 2>&1
echo "=== bd rc=$?"; grep -v "^\s*$" $R15/bd.log | cut -c1-200
for part in "eng:${ENG_S:-170}:--scenarios generation --parallel 1,10 --batching engine --shapes 1024x128 --warmup 1 --generation-runs 2" \
            "pfx:${PFX_S:-90}:--scenarios generation --parallel 10 --batching engine,engine-no-prefix-caching --shapes 1024x128 --shared-prefix 768 --warmup 1 --generation-runs 2"; do
  name=${part%%:*}; rest=${part#*:}; secs=${rest%%:*}; args=${rest#*:}
  s=$(date +%s); timeout $secs $B/phi3v bench run --preset phi3v-128k --device cuda $args --out $R15/$name > $R15/$name.log 2>&1
  echo "=== $name rc=$? $(( $(date +%s) - s )) s"; grep -v "^\s*$" $R15/$name.log | tail -12 | cut -c1-200
  cat $R15/$name/card.md 2>/dev/null | head -30
done
cd $R
(cd $OUT && tar czf s15a.tgz s15a && rm -rf s15a)
tar czf - -C $D . | split -b 15M - $OUT/cache.tgz.part-
ls -la $OUT
