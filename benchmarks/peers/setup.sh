#!/usr/bin/env bash
# The peers of benchmarks/generative_runtimes.py live in their own virtual environment, never in
# Lepton's dependencies: llama-cpp-python (built from source for this CPU), gguf (to convert an HF
# folder to GGUF with llama.cpp's convert_hf_to_gguf.py from the same sdist) and onnxruntime-genai.
#
# The venv sees the system site-packages, so torch, transformers and lepton's own dependencies are
# the ones Lepton is measured with (the same torch build on both sides of a comparison).
#
#   bash benchmarks/peers/setup.sh            # venv at benchmarks/peers/.venv (gitignored)
#   PEERS_VENV=/somewhere bash benchmarks/peers/setup.sh
#
# The llama.cpp build takes several minutes; it is pinned to one core (taskset -c ${PEERS_CORE:-1})
# so it does not starve the other users of a small machine. Set PEERS_CORE= (empty) to use all.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${PEERS_VENV:-$HERE/.venv}"
SRC="$HERE/src"
LLAMA_CPP_PYTHON="${LLAMA_CPP_PYTHON:-0.3.36}"
ORT_GENAI="${ORT_GENAI:-0.18.0}"
PIN=()
if [ -n "${PEERS_CORE-1}" ] && command -v taskset >/dev/null; then PIN=(taskset -c "${PEERS_CORE-1}"); fi

python -m venv --system-site-packages "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip

# ONNX Runtime GenAI: a prebuilt wheel; it needs onnxruntime>=1.31, which Lepton's environment has.
"$PY" -m pip install "onnxruntime-genai==$ORT_GENAI" gguf

# llama-cpp-python from source with native CPU flags (AVX-512/VNNI where the CPU has them).
CMAKE_ARGS="-DGGML_NATIVE=ON" CMAKE_BUILD_PARALLEL_LEVEL=1 "${PIN[@]}" \
    "$PY" -m pip install --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON"

# convert_hf_to_gguf.py ships in the sdist (vendor/llama.cpp), not in the wheel: unpack it once.
mkdir -p "$SRC"
if [ ! -f "$SRC/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
    "$PY" -m pip download --no-binary :all: --no-deps -d "$SRC" "llama-cpp-python==$LLAMA_CPP_PYTHON"
    tar -xzf "$SRC/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$SRC"
fi
# The converter imports its own gguf-py copy first when run from the sdist; keep the installed one too.
echo "peers ready: $PY"
echo "converter: $SRC/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp/convert_hf_to_gguf.py"
