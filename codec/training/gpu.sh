#!/bin/sh
# The device command of a GPU training run (codec/training/gpu.py): `sh codec/training/gpu.sh [CONFIG [SNAPSHOT]]`
# trains CONFIG (default: configs/odp-refine-x2-gpu.toml, the refinement stage's decoder from the shipped
# odp-refine-x2-v4) for ODP_GPU_SECONDS (default 360) on a lent GPU, continuing SNAPSHOT (a committed
# snapshot folder) if one is named, and leaves the snapshot, its log and the GPU's name in $OUT; then it
# measures CUDA encoding throughput (issue 26: codec/evaluation/throughput.py) on 64 of the carried photos
# (the eval photos do not fit the 64 MiB that travels) into $OUT/throughput.json. Needs .gpu/ carried
# (`python -m odp.codec.training.gpu pack`) and the tree slimmed (`... gpu slim`). No install: the
# repository is put on the path as the `odp` package it is.
set -e
config=${1:-codec/training/configs/odp-refine-x2-gpu.toml}
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/odp
if ls .gpu/wheels/*.whl >/dev/null 2>&1; then  # what the device's Python lacks (gpu.py's WHEELS)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/pkg .gpu/wheels/*.whl
fi
export PYTHONPATH=/tmp/pkg${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ -n "$2" ]; then cp -r "$2" "$OUT/snapshot"; fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
python3 -m odp.codec.training.train --config "$config" --run /tmp/odp-run --snapshot "$OUT/snapshot" \
    --threads 8 --stop-after "${ODP_GPU_SECONDS:-360}" 2>&1 | tail -n 40
timeout 100 python3 -m odp.codec.evaluation.throughput .gpu/photos --device cuda --limit 64 --check-cpu \
    --out "$OUT/throughput.json" 2>&1 | tail -n 12 || true
