#!/usr/bin/env bash
# Builds (here, 2 cores: ~30 min from clean) the release binaries the device scripts run and
# packs them into .gpu/bin as .xz (carry .gpu; gpu_env.sh unpacks them): phi3v (cuda, wgpu with vulkan,
# plugin), phi3v-plugin-conformance, phi3v-logits-diff, phi3v-parity, the test binaries
# engine, matmul_k_stages and kernels, and the plugins libphi3v_plugin_cuda.so and
# libphi3v_plugin_iluvatar.so.
set -euo pipefail
cd "$(dirname "$0")/.."
# The commit the pack is built from (and whether the tree had changes), for the next session
# to check before it carries an old pack: .gpu/commit.txt.
mkdir -p .gpu && { git rev-parse HEAD; git status --short --untracked-files=no | sed 's/^/changed: /'; } > .gpu/commit.txt
P="-p phi3v-cli -p phi3v-tests -p phi3v-plugin-cuda -p phi3v-plugin-iluvatar"
F=phi3v-cli/cuda,phi3v-cli/wgpu,phi3v-cli/vulkan,phi3v-cli/plugin,phi3v-tests/cuda,phi3v-tests/wgpu,phi3v-tests/plugin
cargo build --release $P --features $F
mkdir -p .gpu/bin && rm -f .gpu/bin/*
for f in phi3v phi3v-plugin-conformance phi3v-logits-diff phi3v-parity libphi3v_plugin_cuda.so libphi3v_plugin_iluvatar.so; do
    cp target/release/$f .gpu/bin/
done
# Test binaries: their paths come from cargo's JSON messages.
cargo test --release $P --features $F --no-run --test engine --test matmul_k_stages --test kernels \
    --message-format=json 2>/dev/null | python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], ".gpu/bin/" + m["target"]["name"])
        print("test binary", m["target"]["name"])'
# One xz stream with a dictionary larger than the tar: the binaries share most of their code
# (Burn, CubeCL), which separate .xz files would each store again (50 MB vs 27 MB; the tree
# that travels to the device machine is limited to 64 MiB). ~5 min on 2 cores.
(cd .gpu/bin && tar cf - $(ls) | xz -T1 --lzma2=preset=9,dict=320MiB > ../bins.tar.xz && rm -f * && mv ../bins.tar.xz .)
du -sh .gpu/bin
