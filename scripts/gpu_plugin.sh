#!/usr/bin/env bash
# Issue 9 on the GPU machine: the model through the plugin runtime (backends/plugin) with the
# reference CUDA plugin, against Burn's own CUDA backend on the same GPU.
#   1. phi3v-logits-diff: last-position logits of every fixture case, plugin vs `cuda`, f32 and
#      bf16: prints the max abs difference per case and overall.
#   2. phi3v-parity: the whole fixture parity suite through the plugin (f32, bf16) and on
#      `cuda` (f32) for the side-by-side table.
#   3. The Iluvatar shim in stand-in mode (PHI3V_COREX_STANDIN=1: the same code path over the
#      NVIDIA libraries), logits vs `cuda` in f16 (its profile turns bf16 off).
# Binaries (release) in .gpu/bin, plain or .xz (the parity binary under its own name, so it
# does not collide with the cuda-only phi3v-parity other scripts use):
#   cargo build --release -p phi3v-tests --features cuda,plugin --bin phi3v-parity --bin phi3v-logits-diff
#   cargo build --release -p phi3v-plugin-cuda -p phi3v-plugin-iluvatar
#   cp target/release/phi3v-parity .gpu/bin/phi3v-parity-plugin
#   cp target/release/{phi3v-logits-diff,libphi3v_plugin_cuda.so,libphi3v_plugin_iluvatar.so} .gpu/bin/
#   xz -T0 -f .gpu/bin/{phi3v-parity-plugin,phi3v-logits-diff}     # optional, to fit the carry limit
# Usage (device tool, carry .gpu): bash scripts/gpu_plugin.sh [seconds per job]
set -u
LIMIT=${1:-540}
R=$PWD; B=$R/.gpu/bin; W=/tmp/wp; OUT=${OUT:-/tmp/out}; mkdir -p "$W" "$OUT"
for f in "$B"/phi3v-parity-plugin.xz "$B"/phi3v-logits-diff.xz "$B"/libphi3v_plugin_*.so.xz; do
  [ -f "$f" ] && { [ -f "${f%.xz}" ] || xz -dk "$f"; }
done
chmod +x "$B"/phi3v-parity-plugin "$B"/phi3v-logits-diff 2>/dev/null
export PHI3V_FIXTURES=$R/tests/fixtures
PLUGIN=$B/libphi3v_plugin_cuda.so; ILUVATAR=$B/libphi3v_plugin_iluvatar.so
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for f in "$B/phi3v-parity-plugin" "$B/phi3v-logits-diff" "$PLUGIN"; do
  [ -e "$f" ] || { echo "missing $f (see the build commands at the top of this script)"; exit 1; }
done
# Kernel sources that fail to compile in the plugin land here (the runtime saves them).
export PHI3V_PLUGIN_KERNEL_DIR=$W/failed-kernels

# job NAME CMD...: CMD in the background in $W/NAME, at most $LIMIT s, output in out.txt/err.txt.
job() {
  local d=$W/$1; shift; mkdir -p "$d"
  (cd "$d" && t0=$(date +%s) && timeout "$LIMIT" "$@" > out.txt 2> err.txt; echo "rc=$? ($(( $(date +%s) - t0 )) s)" >> out.txt) &
}
job diff-f32    "$B/phi3v-logits-diff" --device "plugin:$PLUGIN:0" --against cuda:0 --dtype f32
job parity-plugin-f32  "$B/phi3v-parity-plugin" --device "plugin:$PLUGIN:0" --dtype f32
# bf16 autotunes many more candidate kernels (minutes per shape on a shared machine): opt-in.
if [ -n "${PLUGIN_BF16:-}" ]; then
  job diff-bf16   "$B/phi3v-logits-diff" --device "plugin:$PLUGIN:0" --against cuda:0 --dtype bf16
  job parity-plugin-bf16 "$B/phi3v-parity-plugin" --device "plugin:$PLUGIN:0" --dtype bf16
  job parity-cuda-f32    "$B/phi3v-parity-plugin" --device cuda:0 --dtype f32
fi
[ -e "$ILUVATAR" ] && job iluvatar-standin-f16 env PHI3V_COREX_STANDIN=1 "$B/phi3v-logits-diff" --device "plugin:$ILUVATAR:0" --against cuda:0 --dtype f16
wait

for d in "$W"/*/; do
  n=$(basename "$d"); [ "$n" = failed-kernels ] && continue
  echo "=== $n"; cat "$d/out.txt"; grep -v "^\s*$" "$d/err.txt" | tail -${TAIL:-6}
done
echo "=== max abs difference of the last-position logits, plugin vs cuda"
grep -h "max abs Δ over all cases" "$W"/diff-*/out.txt "$W"/iluvatar-*/out.txt 2>/dev/null
ls "$PHI3V_PLUGIN_KERNEL_DIR" 2>/dev/null | head
collect
[ -d "$PHI3V_PLUGIN_KERNEL_DIR" ] && cp -r "$PHI3V_PLUGIN_KERNEL_DIR" /tmp/res/
tar czf "$OUT/plugin-results.tgz" -C /tmp/res . && ls -la "$OUT"
