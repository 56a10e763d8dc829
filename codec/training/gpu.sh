#!/bin/sh
# The device command of a GPU training run (codec/training/gpu.py): continue the committed v3 snapshot
# for ODP_GPU_SECONDS (default 360) on a lent GPU, then leave the snapshot, its log and the GPU's name
# in $OUT; then measure CUDA encoding throughput (issue 26: codec/evaluation/throughput.py) on 64 of the
# carried photos (the eval photos do not fit the 64 MiB carry beside the tree) into $OUT/throughput.json. Needs .gpu/ carried (python -m odp.codec.training.gpu pack). No install: the repository is
# put on the path as the `odp` package it is.
set -e
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/odp
export PYTHONPATH=/tmp/pkg${PYTHONPATH:+:$PYTHONPATH}
cp -r codec/training/snapshots/odp-small-v3 "$OUT/snapshot"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
python3 -m odp.codec.training.train --config codec/training/configs/odp-small-v3-gpu.toml --run /tmp/odp-run \
    --snapshot "$OUT/snapshot" --threads 8 --stop-after "${ODP_GPU_SECONDS:-360}" 2>&1 | tail -n 40
timeout 120 python3 -m odp.codec.evaluation.throughput .gpu/photos --device cuda --limit 64 --check-cpu \
    --out "$OUT/throughput.json" 2>&1 | tail -n 12 || true
