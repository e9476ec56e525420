#!/usr/bin/env bash
# Issue #27's decisive counts: the whole toy book under the `toy-full` profile on one GPU, every
# chapter at its profile's counts (notebook defaults), through the runner `make reproduce` uses.
#   bash benchmarks/toy_full_book.sh OUTDIR                # on the GPU machine (carry .whl .whl-nb)
#   CHAPTERS="00_overview" bash benchmarks/toy_full_book.sh OUTDIR --cpu-dry-run   # here: the logic
# Resumable across device calls on the same (warm) machine: chapters recorded as ok in
# $STATE/paper_profile.json are skipped, so the same command again goes on where the last call
# stopped. A chapter starts only when ${MIN_CHAPTER_S:-60} s of the ${BUDGET_S:-560} s budget are
# left; one stopped by the budget is recorded as timed out (with its wall time) and runs again
# next call. OUTDIR gets summary.json (steps, each chapter's wall time, GPU, peak memory) and
# book.tar.xz (the chapters' results/*.json, paper_profile.json, the logs).
set -u
out=${1:?usage: toy_full_book.sh OUTDIR [--cpu-dry-run]}
dry=0; [ "${2:-}" = "--cpu-dry-run" ] && dry=1
mkdir -p "$out"; out=$(cd "$out" && pwd)
repo=$(pwd)
PY=${PY:-python3}
budget=${BUDGET_S:-560}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# 02 and 03 first (the SAEs every later chapter reads), then the chapters that read them, 01
# (the models alone) and 07 (the verdicts, from every chapter's results) last
chapters=${CHAPTERS:-02_collect 03_train 05_features 04_evaluate 06_riebench 01_shapesworld 00_overview 07_claims}
if [ $dry = 1 ]; then
  PY=${PY_DRY:-.venv/bin/python}
  state=${STATE:-$out/state}
  root=$state/root; mkdir -p "$root"  # results/ and artifacts/ of its own: this checkout's stay as they are
  for p in notebooks models src benchmarks pyproject.toml _config.yml _toc.yml; do [ -e "$root/$p" ] || ln -s "$repo/$p" "$root/$p"; done
  export REPRO_ROOT=$root PYTHONPATH=$repo/src${PYTHONPATH:+:$PYTHONPATH}
  profile=toy
else
  state=${STATE:-$repo/build/toy_full_book}
  profile=${PROFILE:-toy-full}
  site=/tmp/toy-full-site
fi
mkdir -p "$state"
call=$(date +%H%M%S)
logs=$state/logs-$call; mkdir -p "$logs"
STEP_LOGS=$logs
. "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; free -g; nproc; } > "$logs/machine.txt" 2>&1
if [ $dry = 0 ]; then
  step setup 90 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl .whl-nb/*.whl
  export PYTHONPATH=$repo/src:$site${PYTHONPATH:+:$PYTHONPATH}
fi
done_ok() {
  [ -f "$state/paper_profile.json" ] && $PY -c "import json,sys; c=json.load(open('$state/paper_profile.json'))['chapters']; sys.exit(0 if c.get('$1',{}).get('ok') else 1)" 2>/dev/null
}
for ch in $chapters; do
  if done_ok "$ch"; then echo "== $ch: done in an earlier call"; continue; fi
  if [ $(( budget - SECONDS )) -lt "${MIN_CHAPTER_S:-60}" ]; then
    echo "== $ch: not started ($(( budget - SECONDS )) s left): run this command again"; printf '%s\tdeferred\t0\n' "$ch" >> "$logs/steps.tsv"; continue
  fi
  step "$ch" 600 $PY benchmarks/paper_profile.py run --out "$state" --profile "$profile" --defaults "$ch"
done

results=${REPRO_ROOT:-$repo}/results
mkdir -p "$logs/results"; cp "$results"/*.json "$logs/results/" 2>/dev/null; cp "$state/paper_profile.json" "$logs/" 2>/dev/null
tar -cJf "$out/book.tar.xz" -C "$state" "logs-$call"
$PY - "$out" "$logs" "$state" <<'PYEOF'
import json, sys, pathlib
out, logs, state = (pathlib.Path(a) for a in sys.argv[1:])
steps = [dict(zip(("step", "rc", "seconds"), l.split("\t"))) for l in (logs / "steps.tsv").read_text().splitlines()]
record = json.loads((state / "paper_profile.json").read_text()) if (state / "paper_profile.json").exists() else {}
short = {name: {k: e.get(k) for k in ("ok", "wall_s", "peak_rss_sampled_gib", "timed_out", "error")}
         | {k: e.get("resources", {}).get(k) for k in ("peak_gpu_memory_gib", "images_per_s")}
         for name, e in record.get("chapters", {}).items()}
summary = {"steps": steps, "machine": record.get("machine"), "chapters": short,
           "book_wall_s": round(sum(e.get("wall_s") or 0 for e in short.values() if e.get("ok")), 1)}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
PYEOF
