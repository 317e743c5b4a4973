#!/usr/bin/env bash
# Install llama-cpp-python (the CPU int8/int4 engine, qwen_core/llamacpp) and llama.cpp's GGUF converter
# into .venv. Idempotent. PyPI has only the sdist, so the first run builds it: measured 2026-12-02 on the
# 2-vCPU dev machine (other jobs running): see docs/PERFORMANCE.md "llama.cpp build". The wheel is cached
# in $LLAMACPP_CACHE (default ~/.cache/qwen-chat/llama-cpp-python-<version>-<flags hash>), keyed by the
# version and the build flags, so later runs (and CI with that folder cached) install it in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
# Portable x86-64 build: AVX2/FMA/F16C kernels (every 2-vCPU cloud host of the last decade), not tuned
# to the build machine (-march=native would make a cached wheel crash elsewhere). Only the libraries.
FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_OPENMP=ON \
-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
key=$(echo "$FLAGS" | sha1sum | cut -c1-8)
CACHE=${LLAMACPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qwen-chat/llama-cpp-python-$VERSION-$key}
. .venv/bin/activate
mkdir -p "$CACHE"
sdist="$CACHE/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
  python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE"
fi
wheel=$(ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  echo "Building llama-cpp-python $VERSION from source (once; cached in $CACHE)..."
  start=$(date +%s)
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) CMAKE_ARGS="$FLAGS" python -m pip wheel -q --no-deps -w "$CACHE" "$sdist"
  echo "Built in $(( $(date +%s) - start )) s"
  wheel=$(ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl | head -1)
fi
# torch pinned again so no dependency can swap the CPU build.
python -m pip install -q "torch==2.13.0" -r requirements-llamacpp.txt "$wheel"
# The converter (convert_hf_to_gguf.py's conversion package and its own gguf-py, newer than PyPI's gguf
# of the same version number) ships in the sdist only; qwen_core/llamacpp/cache.py looks for it here.
share=.venv/share/llama-cpp-convert
if [ ! -f "$share/.version-$VERSION" ]; then
  rm -rf "$share" && mkdir -p "$share"
  top="llama_cpp_python-$VERSION/vendor/llama.cpp"
  tar -xzf "$sdist" -C "$share" --strip-components=3 "$top/conversion" "$top/gguf-py" "$top/LICENSE"
  touch "$share/.version-$VERSION"
fi
