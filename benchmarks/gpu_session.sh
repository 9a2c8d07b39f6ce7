#!/usr/bin/env bash
# The GPU checks of one lent-GPU session, in one go (see README, "Performance"):
#   1. the throughput benchmark for EX-1 and EX-4, with torch.compile;
#   2. a real EX-1 run, 3 epochs, on the JPEG copy of CIFAR-10 (AMP, channels_last, cuDNN autotuning);
#   3. EX-4 from scratch (no ImageNet weights on that machine), 2 epochs: the EfficientNet path on CUDA.
# Usage: OUT=folder bash benchmarks/gpu_session.sh   (needs ./.gpu/make_cifar10.py and its archive)
# Each step has its own time limit so that the later ones still run and the logs come back.
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
step() { echo; echo "=== $1 ($(date +%T))"; }
step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
step "data"
timeout 120 $PY .gpu/make_cifar10.py data | tail -2
step "benchmark ex_1 ex_4 --compile"
timeout 300 $PY -m benchmarks.throughput --experiments ex_1 ex_4 --compile --seconds 1 --rounds 3 --workers 8 \
    --out "$OUT/throughput-cuda.json" 2>&1 | grep -v "it/s]$"
step "ex_1, 3 epochs, JPEG copy of CIFAR-10"
timeout 150 $PY ex_1.py --dataset cifar10 --epochs 3 --out /tmp/gpu_runs/ex_1 2>&1 | grep -v "it/s]$" | tail -25
step "ex_4 from scratch, 2 epochs, JPEG copy of CIFAR-10"
timeout 200 $PY ex_4.py --dataset cifar10 --epochs 2 --no-pretrained --out /tmp/gpu_runs/ex_4_scratch 2>&1 \
    | grep -v "it/s]$" | tail -25
step "pack"
tar czf "$OUT/gpu_runs.tar.gz" --exclude='*.pth' -C /tmp gpu_runs && ls -la "$OUT"
