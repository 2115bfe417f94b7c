#!/usr/bin/env bash
# CTranslate2 peer of the translation benchmark (ct2_translate.py), in its own virtual environment:
# CTranslate2 is never a dependency of Lepton itself.
#
# Installs ctranslate2 (CPU wheel with int8 kernels) and, only where the system site-packages lack them,
# sacrebleu and tokenizers. The venv sees the system site-packages: CTranslate2's TransformersConverter
# loads the model with transformers and torch, and Lepton's own transformers 5 / torch CPU build do that
# for Marian (checked with ctranslate2 4.8.5 and transformers 5.25). transformers 4.x is no fallback:
# it cannot read Lepton's tokenizer_config.json ("Tokenizer class TokenizersBackend does not exist").
#
#   bash benchmarks/peers/ct2_setup.sh            # venv at benchmarks/peers/.ct2-venv (gitignored)
#   CT2_VENV=/somewhere bash benchmarks/peers/ct2_setup.sh
#
# Skips what is already there: rerunning only finishes an interrupted setup.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${CT2_VENV:-$HERE/.ct2-venv}"
CT2_VERSION="${CT2_VERSION:-4.8.5}"

[ -x "$VENV/bin/python" ] || python -m venv --system-site-packages "$VENV"
PY="$VENV/bin/python"

if ! "$PY" -c "import ctranslate2, sys; sys.exit(ctranslate2.__version__ != '$CT2_VERSION')" 2>/dev/null; then
    "$PY" -m pip install "ctranslate2==$CT2_VERSION"
fi
"$PY" -c "import sacrebleu, tokenizers" 2>/dev/null || "$PY" -m pip install sacrebleu tokenizers

"$PY" -c "
import ctranslate2, torch, transformers
from ctranslate2.converters import TransformersConverter  # noqa: F401
print('ctranslate2', ctranslate2.__version__, '| transformers', transformers.__version__, '| torch', torch.__version__)
print('CPU compute types:', sorted(ctranslate2.get_supported_compute_types('cpu')))
"
echo "ct2 peer ready: $PY $HERE/ct2_translate.py"
