#!/usr/bin/env bash
# Scaling over the GPUs of one machine (issue #19), in one command (~2-3 min on 2 H200s):
#   bash benchmarks/multi_gpu.sh OUTDIR                  # N = the machine's GPUs (nvidia-smi -L)
#   bash benchmarks/multi_gpu.sh OUTDIR --cpu-dry-run    # 2 CPU processes (gloo), tiny model: checks the script
# Three torchrun launches (collection, block-parallel training, data-parallel training), each
# measuring 1 GPU then N GPUs inside one launch (see benchmarks/multi_gpu.py). Each runs under
# `timeout` and the next runs whatever happened. Writes OUTDIR/multi_gpu.json (updated after
# every measurement) and OUTDIR/multi_gpu.log (all output); stores and SAEs go to $WORK.
# Needs diffusers importable for the collection (PYTHONPATH may point at carried wheels).
set -u
out=${1:?usage: multi_gpu.sh OUTDIR [--cpu-dry-run]}
mode=${2:-gpu}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# NVLink multicast (NVLS) off: see the device notes
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} HF_HUB_OFFLINE=1
py=${PYTHON:-python3}
work=${WORK:-${TMPDIR:-/tmp}/multi_gpu_work}
json=$out/multi_gpu.json
log=$out/multi_gpu.log
rm -rf "$work"; mkdir -p "$work"; : > "$log"; rm -f "$json"

if [ "$mode" = --cpu-dry-run ]; then
  n=2; export CUDA_VISIBLE_DEVICES=""; export OMP_NUM_THREADS=1
  t_collect=300; t_train=300
  collect_args=(--model tiny-random --model-dtype float32 --resolution 64 --n-prompts 16 --batch-size 2 --shard-size 2)
  train_args=(--steps 12 --log-every 4 --batch-size 256 --k-aux 16 --synthetic-images 32 --synthetic-channels 64)
else
  n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
  [ "$n" -ge 1 ] || { echo "no GPU listed by nvidia-smi -L" | tee -a "$log"; exit 1; }
  nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv >> "$log" 2>&1
  t_collect=${T_COLLECT:-120}; t_train=${T_TRAIN:-50}
  collect_args=(--n-prompts 512 --batch-size 32 --shard-size 64 --resolution 512)
  train_args=()
fi

record() {  # part name, rc, seconds -> OUTDIR/multi_gpu.json "parts" (no torch import)
  "$py" - "$json" "$1" "$2" "$3" "$n" <<'PY'
import json, os, sys
path, name, rc, s, n = sys.argv[1:]
data = json.load(open(path)) if os.path.exists(path) else {}
data.setdefault("parts", {})[name] = {"rc": int(rc), "wall_s": float(s), "gpus": int(n),
                                      "timed_out": int(rc) in (124, 137)}
tmp = path + ".tmp"
json.dump(data, open(tmp, "w"), indent=2, sort_keys=True)
os.replace(tmp, path)
PY
}

part() {  # part NAME TIMEOUT_S ARGS...: one torchrun launch of benchmarks/multi_gpu.py
  local name=$1 limit=$2; shift 2
  echo "== $name (timeout ${limit}s, $n processes): $*" | tee -a "$log"
  local t0=$SECONDS
  timeout -k 5 "$limit" "$py" -m torch.distributed.run --standalone --nproc-per-node "$n" \
    benchmarks/multi_gpu.py "$@" --work "$work" --json "$json" >> "$log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$log"
  record "$name" "$rc" "$((SECONDS - t0))"
}

stores=("$work/store-${n}gpu" "$work/store-1gpu")
part collect "$t_collect" collect "${collect_args[@]}"
part train_block "$t_train" train --mode block --expansion 4 --store "${stores[@]}" ${train_args[@]+"${train_args[@]}"}
part train_data "$t_train" train --mode data --expansion 16 --also-weak --store "${stores[@]}" ${train_args[@]+"${train_args[@]}"}
echo "== done in $SECONDS s: $json" | tee -a "$log"
