#!/usr/bin/env bash
# Session 15, fourth device call (carry .gpu: call 3's binaries and cache part): the engine and
# static points alone on the machine (call 3 ran them beside compiling test jobs), the
# rotary_write_paged A/B, prefix caching on and off, and the image encode with Burn's attention.
# Usage (device tool): bash scripts/gpu_s15d.sh   (about 250 s)
source scripts/gpu_env.sh
D=$W/bench; mkdir -p $D; R15=$OUT/s15d; mkdir -p $R15
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > $D/cubecl.toml
[ -f .gpu/cache.tgz ] && tar xzf .gpu/cache.tgz -C $D
cd $D
G="--scenarios generation --shapes 1024x128 --warmup 1 --generation-runs 2"
for part in "eng:rotary_write_paged:60:$G --parallel 1,10 --batching engine" \
            "engon::40:$G --parallel 1,10 --batching engine" \
            "static:rotary_write_paged:70:$G --parallel 1,10,64 --batching static" \
            "pfx:rotary_write_paged:50:$G --parallel 10 --batching engine,engine-no-prefix-caching --shared-prefix 768" \
            "img0:rotary_write_paged:60:--scenarios images --images 1344x1344 --num-crops 16 --warmup 1 --runs 5"; do
  name=${part%%:*}; rest=${part#*:}; off=${rest%%:*}; rest=${rest#*:}; secs=${rest%%:*}; args=${rest#*:}
  s=$(date +%s); PHI3V_KERNELS_OFF=$off timeout $secs $B/phi3v bench run --preset phi3v-128k --device cuda $args --out $R15/$name > $R15/$name.log 2>&1
  echo "=== $name (kernels off: ${off:-none}) rc=$? $(( $(date +%s) - s )) s"; grep -v "^\s*$" $R15/$name.log | grep -v "^kernel cache\|parameters on" | tail -6 | cut -c1-220
done
cd $R
(cd $OUT && tar czf s15d.tgz s15d && rm -rf s15d); ls -la $OUT
