#!/usr/bin/env bash
# The ShapesWorld models on one GPU, trained as a series of calls of at most ~10 minutes each.
# Every call runs the same command; the run's state lives in $TOY (default /tmp/toy):
#
#   bash benchmarks/toy_device_train.sh OUTDIR
#
# First call: the speed benchmark (today's loop, eager and CUDA-graph steps; OUTDIR/toy_train_speed.json),
# then stage lengths from the measured graph rates and the seconds given to each stage
# (VAE_S, BASE_S, TURBO_S), then training. Later calls resume from the checkpoint (repro toy train
# resumes by itself; keep the calls back to back: the machine goes back after 30 s idle, and with it
# the checkpoint). Every call leaves the pipelines as they stand in OUTDIR/pipelines.tar.* (untar into
# models/); the call that finishes prints the oracle's prompt following (500 held-out captions) of
# both models and of the VAE.
# Needs diffusers importable (carried wheels, see benchmarks/README.md).
set -u
out=${1:?usage: toy_device_train.sh OUTDIR}
toy=${TOY:-/tmp/toy}
budget=${BUDGET:-560}            # seconds this call may spend before it must have saved the checkpoint
t0=$(date +%s)
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$toy" "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [ ! -f "$toy/args" ]; then
    python3 benchmarks/toy_train_speed.py --legacy-src .cache/legacy/src --out "$out/toy_train_speed.json" || exit 1
    python3 - "$out/toy_train_speed.json" > "$toy/args" <<EOF || exit 1
import json, sys
rates = json.load(open(sys.argv[1]))["rates"]
seconds = {"vae": ${VAE_S:-200}, "base": ${BASE_S:-640}, "turbo": ${TURBO_S:-270}}
steps = {s: int(rates[f"{s}/graph"]["steps_per_s"] * seconds[s] / 100) * 100 for s in seconds}
print("--steps " + ",".join(f"{s}={n}" for s, n in steps.items()) + " ${EXTRA_ARGS:-}")
EOF
fi
echo "training with: $(cat "$toy/args")"
left=$(( budget - ($(date +%s) - t0) ))
python3 -m repro.cli toy train --out "$toy/models" --work "$toy/work" $(cat "$toy/args") \
    --chunk-seconds "$left" --no-progress > "$toy/last.json" || { cat "$toy/last.json"; exit 1; }
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({k: r[k] for k in ('finished','stage','step','stages','data_seconds','total_seconds') if k in r}, indent=1))" "$toy/last.json"

# What crosses to the next machine if this one goes back: the pipelines as they stand (fp16,
# <= 2 x 20 MB; the exact state, 110-122 MB, is over the 64 MiB a call returns). A cold restart
# continues from them with a fresh optimiser: --stage base,turbo --init-base shapes-base.
rm -rf "$toy/export" && python3 -m repro.cli toy export "$toy/work/checkpoint" --out "$toy/export" --unfinished \
    > /dev/null && (cd "$toy/export" && tar cf - shapes-*) | split -b 15M - "$out/pipelines.tar."
if [ -f "$toy/models/shapes-turbo/training.json" ]; then
    for a in "--model $toy/models/shapes-turbo --steps 1" "--model $toy/models/shapes-turbo --steps 4" \
             "--model $toy/models/shapes-base --steps 25 --guidance 5"; do
        python3 -m repro.cli toy eval $a --n 500 | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps(r))"
    done
    python3 - "$toy/models/shapes-base" <<'EOF'
import json, sys
from repro.models.loading import load_pipeline
from repro.shapes.oracle import load_oracle
from repro.toymodels import vae_ceiling
pipe = load_pipeline(sys.argv[1], device="auto")
print(json.dumps({"vae_ceiling": vae_ceiling(pipe.vae, load_oracle(device=pipe.device), n=500)}))
EOF
fi
echo "call took $(( $(date +%s) - t0 )) s"
