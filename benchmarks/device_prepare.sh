#!/usr/bin/env bash
# Gathers what `benchmarks/device_run.sh` needs on an offline NVIDIA machine whose python3 has numpy
# and CUDA 13's libraries but no MLX (this workplace's device machine), in pieces that each fit
# one call's carried files (64 MiB, the repository included): MLX's CUDA wheel is about 90 MB.
#
#   benchmarks/device_prepare.sh [DIR]        (default: .device-carry, ignored by git)
#
# DIR must lie inside this repository: a device call carries paths relative to its root.
#
# Writes DIR/part1 (the first piece of mlx-cuda-13's wheel) and DIR/part2 (the rest of it, mlx's
# wheel and Kyutai's moshi_mlx 0.3.0 wheel), then prints the two device calls that use them.
# MLX_VERSION (default: this venv's mlx), PY (default 3.12: the device's python) and PIECE (default
# 56M, `split` sizes) change what is fetched and how it is cut.
set -euo pipefail

case "${1:-}" in
  -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
  -*) echo "device_prepare.sh: unknown option $1 (usage: device_prepare.sh [DIR])" >&2; exit 2 ;;
esac
dir="${1:-.device-carry}"
py="${PY:-3.12}"
piece="${PIECE:-56M}"
version="${MLX_VERSION:-$(python3 -c 'import mlx.core as mx; print(mx.__version__)' 2>/dev/null || true)}"
if [ -z "$version" ]; then
  echo "device_prepare.sh: no mlx in this python; set MLX_VERSION (e.g. MLX_VERSION=0.32.4)" >&2
  exit 2
fi
if [ -e "$dir" ]; then
  echo "device_prepare.sh: $dir already exists; remove it or choose another folder" >&2
  exit 2
fi
root="$(git rev-parse --show-toplevel 2>/dev/null || true)"
if [ -z "$root" ]; then
  echo "device_prepare.sh: run it inside the repository (a device call carries paths relative to its root)" >&2
  exit 2
fi
abs="$(realpath -m "$dir")"
case "$abs" in
  "$root"/?*) dir="${abs#"$root"/}" ;;
  *) echo "device_prepare.sh: ${1:-$dir} is not inside the repository $root (a device call carries paths relative to its root)" >&2
     exit 2 ;;
esac
cd "$root"
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qxF "/$dir/" "$exclude" 2>/dev/null || echo "/$dir/" >> "$exclude"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  -d "$tmp" "mlx==$version" "mlx-cuda-13==$version" "moshi_mlx==0.3.0"
new="$tmp/carry"  # moved to DIR once whole: an interrupted run leaves no DIR behind
mkdir -p "$new/part1" "$new/part2"
cuda_wheel="$(cd "$tmp" && ls mlx_cuda_13-*.whl)"
(cd "$new/part1" && split -b "$piece" -d -a 2 "$tmp/$cuda_wheel" "$cuda_wheel.piece")
mv "$new/part1/$cuda_wheel.piece01" "$new/part2/" 2>/dev/null || true
if ls "$new/part1/$cuda_wheel.piece0"[2-9] >/dev/null 2>&1; then
  echo "device_prepare.sh: the CUDA wheel needs more than two pieces of $piece; set a larger PIECE" >&2
  exit 2
fi
mv "$tmp"/mlx-*.whl "$tmp"/moshi_mlx-*.whl "$new/part2/"
(cd "$tmp" && sha256sum "$cuda_wheel") > "$new/part2/SHA256"
mkdir -p "$(dirname "$dir")"
mv "$new" "$dir"
du -sh "$dir/part1" "$dir/part2"
cat <<EOF

Device calls (the second within the machine's 30 s warm window, or part1 is gone):
  1. carry ["$dir/part1"], command: mkdir -p /tmp/w && cp $dir/part1/* /tmp/w/
  2. carry ["$dir/part2"], command: bash benchmarks/device_run.sh $dir/part2
     (a plan of lmgen_7b_device.py's, in JSON, can follow as a second argument; see device_run.sh)
EOF
