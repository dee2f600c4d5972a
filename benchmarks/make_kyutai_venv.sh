#!/usr/bin/env bash
# Builds a virtualenv that runs Kyutai's moshi_mlx 0.3.0, for `moshi-mlx bench --kyutai-python`.
#
#   benchmarks/make_kyutai_venv.sh [VENV_DIR] [--cuda]      (default VENV_DIR: ./kyutai-venv)
#   benchmarks/make_kyutai_venv.sh --target DIR              (Kyutai's package alone, into DIR)
#
# Kyutai's package has the same import name as ours, so it lives in its own venv. It is installed
# with --no-deps (its pins would pull in a different mlx) plus the few packages its LM and Mimi
# import; mlx is the same version as this project's venv when one is active (same kernels on both
# sides), else the newest. --cuda installs mlx[cuda] (Linux with an NVIDIA GPU) instead of mlx[cpu]
# on Linux; macOS always gets plain mlx (Metal). Set PYTHON to pick the interpreter (default python3).
# Prints the python to pass as --kyutai-python (or to export as MOSHI_MLX_KYUTAI_PYTHON).
# --target installs only Kyutai's package into DIR (KYUTAI_SOURCE: a wheel file instead of PyPI), for
# a machine without internet whose python already has mlx and numpy: there run
# `moshi-mlx bench --kyutai-python python --kyutai-path DIR`; prints DIR.
set -euo pipefail

venv="./kyutai-venv"
cuda=0
target=""
while [ $# -gt 0 ]; do
  arg="$1"; shift
  case "$arg" in
    --cuda) cuda=1 ;;
    --target) target="${1:?--target needs a folder}"; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "make_kyutai_venv.sh: unknown option $arg" >&2; exit 2 ;;
    *) venv="$arg" ;;
  esac
done
if [ -n "$target" ]; then
  "${PYTHON:-python3}" -m pip install --quiet --no-deps --target "$target" "${KYUTAI_SOURCE:-moshi_mlx==0.3.0}"
  echo "$(cd "$target" && pwd)"
  exit 0
fi
if [ -e "$venv" ] && [ -n "$(ls -A "$venv" 2>/dev/null)" ]; then
  echo "make_kyutai_venv.sh: $venv already exists and is not empty; remove it or choose another folder" >&2
  exit 2
fi

mlx_version=""
if python -c "import mlx.core" 2>/dev/null; then
  mlx_version="==$(python -c 'import mlx.core as mx; print(mx.__version__)')"
fi
if [ "$(uname)" = Darwin ]; then
  mlx="mlx$mlx_version"
elif [ "$cuda" = 1 ]; then
  mlx="mlx[cuda]$mlx_version"
else
  mlx="mlx[cpu]$mlx_version"
fi

"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "$mlx" numpy safetensors sentencepiece huggingface_hub
"$venv/bin/pip" install --quiet --no-deps moshi_mlx==0.3.0
cd / && "$venv/bin/python" -c "from moshi_mlx import models, utils; models.LmGen, utils.Sampler"
cd - >/dev/null
echo "$(cd "$venv" && pwd)/bin/python"
