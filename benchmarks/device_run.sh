#!/usr/bin/env bash
# On the device machine: joins MLX's CUDA wheel from the pieces `benchmarks/device_prepare.sh` cut
# (the first one copied to /tmp/w by an earlier call, the rest in PART2), installs MLX into
# /tmp/site (beside the python's own CUDA 13 packages) and Kyutai's moshi_mlx 0.3.0 into
# /tmp/kyutai, then runs `benchmarks/lmgen_7b_device.py`
# with PLAN (its JSON), one row a line to stdout and to $OUT/lmgen.jsonl (what comes back even when
# the call runs out of time). Default plan: bf16, q8 and q4, 3 rounds of 30 steps; ours whole, in
# stages of 8 temporal layers and 6 depformer layer steps, and whole with MLX's CUDA graphs as large
# as it allows (250 operations, no size limit: fewer graph launches and completion callbacks per
# frame; its defaults on an H100/H200 are 100 operations and 1000 MB); and Kyutai's.
#
#   bash benchmarks/device_run.sh PART2 [PLAN]
set -euo pipefail

part2="${1:?usage: device_run.sh PART2 [PLAN]}"
default_plan='{"precisions": [["bfloat16", null], ["bfloat16", 8], ["bfloat16", 4]], "rounds": 3, "steps": 30, "warmup": 5,
  "variants": [["ours", null, null], ["ours-stages-8-6", 8, 6],
               ["ours-graphs-250", null, null, {"MLX_MAX_OPS_PER_BUFFER": 250, "MLX_MAX_MB_PER_BUFFER": 1000000}]]}'
plan="${2:-$default_plan}"
out="${OUT:-/tmp/out}"
mkdir -p /tmp/w "$out"
cp "$part2"/* /tmp/w/
cd /tmp/w
wheel="$(awk '{print $2}' SHA256)"
cat "$wheel".piece* > "$wheel"
sha256sum -c SHA256
cd - >/dev/null
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  /tmp/w/mlx-*.whl "/tmp/w/$wheel"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/kyutai \
  /tmp/w/moshi_mlx-*.whl
# MLX finds CUDA's libraries at `site-packages/nvidia/*/lib` beside itself (its RPATH): in
# /tmp/site, that is the folder of the image's own nvidia-* packages.
nvidia="$(python3 -c 'import nvidia, os; print(next(p for p in nvidia.__path__ if os.path.isdir(os.path.join(p, "nccl"))))' 2>/dev/null || true)"
if [ -z "$nvidia" ]; then
  echo "device_run.sh: python3 has no nvidia-nccl package, so MLX cannot find CUDA's libraries" >&2
  exit 2
fi
ln -sfn "$nvidia" /tmp/site/nvidia
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true) | tee "$out/device.txt"
python3 -c 'import mlx.core as mx; print("mlx", mx.__version__, mx.default_device())' | tee -a "$out/device.txt"
python3 -m benchmarks.lmgen_7b_device /tmp/kyutai "$plan" | tee "$out/lmgen.jsonl"
