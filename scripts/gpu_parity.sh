#!/usr/bin/env bash
# Cross-device parity on a GPU machine (docs/GPU.md recipe): release binaries built elsewhere are
# carried in .gpu/bin (xz-compressed), the Vulkan loader in .gl. Writes logs to $OUT.
# Usage (device tool): bash scripts/gpu_parity.sh [cuda] [wgpu] [mmmu]   (default: all)
set -u
FINAL=${OUT:-/tmp/out}; OUT=/tmp/phi3v-results; rm -rf "$OUT"; mkdir -p "$OUT" "$FINAL"
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
export VK_DRIVER_FILES=${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
B=.gpu/bin; for f in $B/*.xz; do [ -f "$f" ] && xz -dkf "$f"; done; chmod +x $B/phi3v $B/phi3v-parity
export PHI3V_FIXTURES=$PWD/tests/fixtures
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
$B/phi3v devices | tee -a "$OUT/gpu.txt"
run() { local name=$1; shift; echo "== $name: $*"; local t0=$(date +%s); "$@" > "$OUT/$name.md" 2> "$OUT/$name.err"; local rc=$?; echo "rc=$rc ($(( $(date +%s) - t0 )) s)"; cat "$OUT/$name.md"; grep -v "^  .*: [0-9.]* s$" "$OUT/$name.err" | tail -5; }
PHASES=${*:-cuda wgpu mmmu}
M=tests/fixtures/models/phi3v-tiny; I=tests/fixtures/images
if [[ " $PHASES " == *" cuda "* ]]; then
run parity-cuda-f32  $B/phi3v-parity --device cuda --dtype f32
run parity-cuda-bf16 $B/phi3v-parity --device cuda --dtype bf16
fi
if [[ " $PHASES " == *" wgpu "* ]]; then
run parity-wgpu-f32  $B/phi3v-parity --device wgpu --dtype f32
run parity-wgpu-f16  $B/phi3v-parity --device wgpu --dtype f16
fi
if [[ " $PHASES " == *" mmmu "* ]]; then
for d in cpu cuda wgpu; do
  run generate-$d $B/phi3v generate --model $M --device $d --image $I/astronaut.png --prompt "What is the content of this image in details?" --max-new-tokens 10 --json
done
S=tests/fixtures/mmmu_sample
for d in cpu:f32 cuda:bf16 cuda:f32 wgpu:f32; do
  dev=${d%%:*}; dt=${d##*:}
  run mmmu-$dev-$dt $B/phi3v mmmu run --data $S --model tests/fixtures/models/phi35v-tiny --device $dev --dtype $dt --out "$OUT/mmmu-$dev-$dt.jsonl"
done
for d in cuda-bf16 cuda-f32 wgpu-f32; do
  run compare-cpu-f32-vs-$d $B/phi3v mmmu compare "$OUT/mmmu-cpu-f32.jsonl" "$OUT/mmmu-$d.jsonl"
done
fi
# The device tool brings back at most 8 files: one archive.
tar czf "$FINAL/results.tgz" -C "$OUT" .
