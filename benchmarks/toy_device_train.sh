#!/usr/bin/env bash
# The ShapesWorld models trained on all GPUs of the device machine, across several calls.
#
#   bash benchmarks/toy_device_train.sh start OUTDIR   # launch the training in the background, then watch
#   bash benchmarks/toy_device_train.sh watch OUTDIR   # watch it (the next calls, back to back)
#   bash benchmarks/toy_device_train.sh pause|resume   # SIGSTOP/SIGCONT it (e.g. while another benchmark runs)
#
# The training runs as its own process session (setsid), so it outlives the call that started
# it, as long as the machine stays warm: every call must follow the last within ~30 s. It runs
# `torchrun --nproc-per-node <GPUs> -m repro.cli toy train $TRAIN_ARGS` from a copy of src/
# (later calls may replace the working tree), data-parallel over the GPUs. A call watches for
# up to BUDGET seconds (default 540) and prints the metric records as they come; once the
# training has finished it scores both models and the VAE (benchmarks/toy_eval.py, 500
# held-out captions) and leaves in OUTDIR: pipelines.tar.* (untar into models/), metrics.jsonl,
# evals.json, train.log, gpu.log (nvidia-smi dmon). Needs diffusers: carry .whl (benchmarks/README.md).
#
# Several trainings side by side (ablations): give each its own TOY folder, GPUS (e.g. "1": the
# GPUs it may use), PORT (its torchrun port) and one shared DATA folder (the renders, made once).
# PRELOAD=shapes-base copies the repo's base into TOY/models first (a turbo-only run needs it).
# EVAL_ONLY=shapes-turbo scores only that model; TAR=shapes-turbo returns only it (TAR="": none). A run stopped by --chunk-seconds is exported
# as it stands (`repro toy export --unfinished`) and scored.
set -u
cmd=${1:?usage: toy_device_train.sh start|watch|pause|resume OUTDIR}
out=${2:-/tmp/toy-out}
toy=${TOY:-/tmp/toy}
budget=${BUDGET:-540}
t0=$(date +%s)
mkdir -p "$toy" "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
if [ -d .whl ] && [ ! -d /tmp/site/diffusers ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$toy/src

case $cmd in
pause)  pkill -STOP -f 'repro.cli toy train' && echo paused; exit ;;
resume) pkill -CONT -f 'repro.cli toy train' && echo resumed; exit ;;
start)
    [ -f "$toy/run.sh" ] && { echo "already started (remove $toy to start over)"; exit 1; }
    rm -rf "$toy/src" && cp -r src "$toy/src" && cp -r models "$toy/repo-models"
    visible=${GPUS:-$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd,)}
    gpus=$(echo "$visible" | tr ',' '\n' | wc -l)
    nvidia-smi --query-gpu=index,name,memory.total,clocks.max.sm --format=csv,noheader
    echo "training on GPU(s) $visible: repro toy train ${TRAIN_ARGS:-}"
    mkdir -p "$toy/models" "$toy/work"
    for m in ${PRELOAD:-}; do cp -r "models/$m" "$toy/models/"; done
    if [ -n "${DATA:-}" ]; then mkdir -p "$DATA" && ln -sfn "$DATA" "$toy/work/data"; fi
    # REPRO_MODELS_DIR: the oracle comes from the copy; the tree may be replaced by a later call
    cat > "$toy/run.sh" <<INNER
nvidia-smi dmon -s pucm -d 10 > $toy/gpu.log 2>&1 &
dmon=\$!
CUDA_VISIBLE_DEVICES=$visible REPRO_MODELS_DIR=$toy/repo-models python3 -m torch.distributed.run --nproc-per-node $gpus --master-port ${PORT:-29533} \\
    -m repro.cli toy train --out $toy/models --work $toy/work --no-progress ${TRAIN_ARGS:-} \\
    > $toy/result.json 2> $toy/train.log
echo \$? > $toy/rc
kill \$dmon
INNER
    cat "$toy/run.sh"
    setsid bash "$toy/run.sh" < /dev/null > /dev/null 2>&1 &
    ;;
watch) ;;
*) echo "unknown command $cmd"; exit 2 ;;
esac

seen=0
while [ ! -f "$toy/rc" ] && [ $(( $(date +%s) - t0 )) -lt "$budget" ]; do
    sleep 10
    if [ -f "$toy/work/metrics.jsonl" ]; then
        n=$(wc -l < "$toy/work/metrics.jsonl")
        if [ "$n" -gt "$seen" ]; then tail -n 1 "$toy/work/metrics.jsonl"; seen=$n; fi
    fi
done
if [ ! -f "$toy/rc" ]; then
    echo "still training after $(( $(date +%s) - t0 )) s; last log lines:"; tail -n 3 "$toy/train.log"; exit 0
fi
echo "training ended with rc $(cat "$toy/rc")"; tail -n 20 "$toy/train.log"; cat "$toy/result.json"
if grep -q '"finished": false' "$toy/result.json" && [ ! -f "$toy/exported" ]; then
    python3 -m repro.cli toy export "$toy/work/checkpoint" --out "$toy/models" --unfinished && touch "$toy/exported"
fi
cp "$toy/work/metrics.jsonl" "$toy/gpu.log" "$out/" 2>/dev/null; tail -c 4000000 "$toy/train.log" > "$out/train.log"
if [ -n "${TAR-shapes-*}" ]; then  # TAR: which pipelines come back ("" for none; at most 64 MiB in all leave a call)
    (cd "$toy/models" && tar cf - ${TAR-shapes-*}) | split -b 15M - "$out/pipelines.tar."
fi
if [ -d "$toy/models/shapes-turbo" ] && [ ! -f "$toy/evals.json" ]; then
    REPRO_MODELS_DIR="$toy/repo-models" timeout $(( budget - ($(date +%s) - t0) )) python3 benchmarks/toy_eval.py "$toy/models" --n "${EVAL_N:-500}" \
        ${EVAL_ONLY:+--only $EVAL_ONLY} --out "$toy/evals.json"
fi
cp "$toy/evals.json" "$out/" 2>/dev/null
echo "call took $(( $(date +%s) - t0 )) s"
