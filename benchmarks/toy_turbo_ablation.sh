#!/usr/bin/env bash
# Why the 1-step shapes-turbo draws flat scenes grainy: three continuations of the shipped turbo,
# side by side on a 2-GPU device machine (nvidia-h200-x2), same steps, same data, scored alike.
#
#   bash benchmarks/toy_turbo_ablation.sh OUTDIR     # one device call, <= ~9.5 minutes
#
#   A (GPU 0): the shipped recipe continued       - bf16 autocast, teacher_fraction 0.25, 4 096 teacher samples
#   B (GPU 1): A in fp32 (TF32)                   - is it bf16's precision? (x0 = sigma (n - eps), sigma = 14.6)
#   C (GPU 0): A with deterministic targets       - teacher_fraction 0.75 of the 1-step part, 16 384 samples
# OUTDIR/ablation.json: per arm its scores (oracle, 500 held-out captions, 1 and 4 steps), its
# result and last metric records; OUTDIR/ablation_logs.tgz: the logs. The arms' pipelines stay in
# /tmp/arm-<arm>/models on the (warm) machine, for a longer run. Carry .whl.
set -u
out=${1:?usage: toy_turbo_ablation.sh OUTDIR}
steps=${STEPS:-1500}
mkdir -p "$out" /tmp/abl
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1
t0=$(date +%s)
python3 - <<'PY'  # the renders once, for all arms (the DATA cache each run reads)
from pathlib import Path
from repro.models.loading import load_pipeline
from repro.toymodels.config import DataConfig
from repro.toymodels.data import ToyData
ToyData.build(DataConfig(), load_pipeline("models/shapes-base", device="cpu").tokenizer, "cpu", cache=Path("/tmp/toydata"))
PY
echo "data in $(( $(date +%s) - t0 )) s"
common="--stage turbo --steps turbo=$steps --lr turbo=2e-4 --chunk-seconds 420"
arm() {  # arm NAME GPU PORT EXTRA_ARGS
  TOY=/tmp/arm-$1 GPUS=$2 PORT=$3 DATA=/tmp/toydata PRELOAD=shapes-base BUDGET=0 \
    TRAIN_ARGS="$common --init-turbo /tmp/arm-$1/repo-models/shapes-turbo $4" bash benchmarks/toy_device_train.sh start "$out/$1" > /tmp/abl/$1.start.log 2>&1
}
arm A 0 29541 "--teacher-samples 4096"
arm B 1 29542 "--teacher-samples 4096 --no-autocast"
arm C 0 29543 "--teacher-samples 16384 --set turbo.teacher_fraction=0.75"
for a in A B C; do
  left=$(( ${BUDGET:-560} - ($(date +%s) - t0) ))
  TOY=/tmp/arm-$a BUDGET=$left EVAL_ONLY=shapes-turbo TAR="" bash benchmarks/toy_device_train.sh watch /tmp/abl/$a > /tmp/abl/$a.log 2>&1
  echo "== $a"; tail -n 3 /tmp/abl/$a.log
  python3 -c "import json,sys; [print(k, json.dumps(v)) for k, v in json.load(open(sys.argv[1])).items()]" /tmp/arm-$a/evals.json
done
python3 - "$out" <<'PY'
import json, sys, pathlib
arms = {}
for a in "ABC":
    toy = pathlib.Path(f"/tmp/arm-{a}")
    read = lambda p: json.loads(p.read_text()) if p.exists() and p.stat().st_size else None
    metrics = toy / "work" / "metrics.jsonl"
    arms[a] = {"evals": read(toy / "evals.json"), "result": read(toy / "result.json"),
               "metrics_tail": [json.loads(l) for l in metrics.read_text().splitlines()[-4:]] if metrics.exists() else []}
pathlib.Path(sys.argv[1], "ablation.json").write_text(json.dumps(arms, indent=1))
PY
tar czf "$out/ablation_logs.tgz" -C /tmp abl arm-A/train.log arm-B/train.log arm-C/train.log 2>/dev/null
echo "call took $(( $(date +%s) - t0 )) s"
