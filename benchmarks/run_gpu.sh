#!/usr/bin/env bash
# All GPU measurements of the collection/SAE issue in one run (one device session):
#   bash benchmarks/run_gpu.sh OUTDIR
# Needs diffusers & co. importable (see benchmarks/README.md for carrying wheels).
# Each step runs even if an earlier one failed; logs and JSON go to OUTDIR.
set -u
out=${1:?usage: run_gpu.sh OUTDIR}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
step() { name=$1; shift; echo "== $name: $*"; timeout "${STEP_TIMEOUT:-240}" "$@" > "$out/$name.log" 2>&1; echo "   rc=$? ($(tail -c 300 "$out/$name.log" | tr '\n' ' '))"; }
step sae_fast    python3 benchmarks/sae_speed.py --n-features 5120 20480 --steps 100 --out "$out/sae_fast.json"
step sae_ref     python3 benchmarks/sae_speed.py --n-features 5120 20480 --steps 50 --impl reference --out "$out/sae_ref.json"
step unet        python3 benchmarks/unet_speed.py --model standin-sdxl-turbo --batch-sizes 8 16 32 64 --out "$out/unet.json"
step collect     python3 benchmarks/collect_speed.py --model standin-sdxl-turbo --n-prompts 256 --batch-size 32 \
                 --shard-size 128 --token-batch 4096 --repeats 1 --workdir /tmp/collect-bench --out "$out/collect.json"
