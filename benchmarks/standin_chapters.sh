#!/usr/bin/env bash
# Issues #17 and #18 on the standin profile, in one or two device calls (<= 9.5 minutes each):
#   02_collect, 03_train, 05_features at paper_profile.py's reduced counts (SAEs of 1280 x 5120,
#   four blocks), the feature site 05 writes packed for the browser (#18), then 04_evaluate at
#   its DEFAULT counts with its wall time and peak host memory (#17).
#   bash benchmarks/standin_chapters.sh OUTDIR                # on the GPU machine (carry .whl .whl-nb)
#   bash benchmarks/standin_chapters.sh OUTDIR --cpu-dry-run  # here: the same steps on the toy profile
# Resumable: chapters recorded as done in $STATE/paper_profile.json (kept in the working copy,
# which persists on the device between calls) are skipped, and 04 starts only when at least
# ${MIN_04_S:-420} s of the budget are left, so the first call does 02/03/05 and the site, the
# second call 04 (run the same command twice). Each step has its own timeout within
# ${BUDGET_S:-560} s; a failed step does not stop the next. OUTDIR gets at most 7 files:
# summary.json, logs.tar.xz (every log, paper_profile.json, the chapters' results/*.json, the
# executed 04), and once: site_pack.json + site.tar.xz.part-NN (benchmarks/site_pack.py).
#
# ONE_CALL=1: issue #17 alone, in ONE device call (timeout_s 600) on a fresh machine: 02_collect and
# 03_train at reduced counts (03 at ${ONE_CALL_STEPS:-200} SAE steps: 04's cost does not depend on the
# SAEs' quality, only on their shapes, which stay 1280 x 5120, k 10), then 04_evaluate at its DEFAULT
# counts with the rest of the budget (MIN_04_S=60: it always starts; a chapter stopped by the limit
# still records its wall time and peak host memory). 05 and the site are left out. Expected
# (benchmarks/evaluate_cost.py): 02 ~60 s + 03 ~45 s + 04 ~5.7 min, inside BUDGET_S=560.
#   ONE_CALL=1 PY=python3 bash benchmarks/standin_chapters.sh OUTDIR
# Any of PRE_CHAPTERS / PARAMS / MIN_04_S given explicitly wins over the preset.
set -u
if [ "${ONE_CALL:-0}" = 1 ]; then
  PRE_CHAPTERS=${PRE_CHAPTERS:-02_collect 03_train}
  PARAMS=${PARAMS:-"{\"03_train\": {\"steps\": ${ONE_CALL_STEPS:-200}, \"stats_batches\": 10}}"}
  MIN_04_S=${MIN_04_S:-60}
fi
out=${1:?usage: standin_chapters.sh OUTDIR [--cpu-dry-run]}
dry=0; [ "${2:-}" = "--cpu-dry-run" ] && dry=1
mkdir -p "$out"; out=$(cd "$out" && pwd)
repo=$(pwd)
PY=${PY:-python3}
budget=${BUDGET_S:-560}
min04=${MIN_04_S:-420}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ $dry = 1 ]; then
  PY=${PY_DRY:-.venv/bin/python}
  state=${STATE:-$out/state}
  # a mirror of the checkout whose results/, artifacts/, book/ and build/ are its own: the dry
  # run must not overwrite this checkout's toy store, SAEs or book
  root=$state/root; mkdir -p "$root"
  for p in notebooks models src benchmarks pyproject.toml _config.yml _toc.yml; do [ -e "$root/$p" ] || ln -s "$repo/$p" "$root/$p"; done
  export REPRO_ROOT=$root
  profile=toy
  overrides='{"collect_prompts": 256, "sae_steps": 60, "control_steps": 20, "control_budgets": 2, "control_prompts": 8, "timing_prompts": 1, "dead_tokens": 20000, "causal_features": 1, "causal_scenes": 2, "timing_scenes": 1}'
  sitedir=$root/book/chapters/05_features.files
else
  state=${STATE:-$repo/build/standin_chapters}
  profile=standin
  overrides=''
  sitedir=$repo/book/chapters/05_features.files
fi
mkdir -p "$state"
call=$(date +%H%M%S)
logs=$state/logs-$call; mkdir -p "$logs"
rm -f "$logs/steps.tsv"
STEP_LOGS=$logs
. "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
done_ok() {  # done_ok CHAPTER: recorded as ok in the state's paper_profile.json
  [ -f "$state/paper_profile.json" ] && $PY -c "import json,sys; c=json.load(open('$state/paper_profile.json'))['chapters']; sys.exit(0 if c.get('$1',{}).get('ok') else 1)" 2>/dev/null
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; free -g; df -h /tmp .; nproc; } > "$logs/machine.txt" 2>&1
if [ $dry = 1 ]; then
  # The wheels are for the device's Python 3.12: install them with a 3.12 here and import the
  # notebook stack (the chapters themselves run in this checkout's venv, which has it all).
  P312=${PY312:-}
  for c in python3.12 /root/.pyenv/versions/3.12*/bin/python3.12; do
    [ -z "$P312" ] && "$c" -c pass 2>/dev/null && P312=$c
  done
  # what the GPU image already has (KINDS.md's package list), from the registry, once
  img=/tmp/standin-image312
  [ -d $img/attr ] || $P312 -m pip install -q --target $img attrs pyyaml requests click tqdm psutil pygments python-dateutil \
      markdown-it-py mdurl packaging typing-extensions jinja2 six > /dev/null 2>&1
  step setup 120 sh -c "rm -rf /tmp/standin-site312 && $P312 -m pip install -q --no-index --no-deps --no-compile --target /tmp/standin-site312 .whl/*.whl .whl-nb/*.whl && PYTHONPATH=/tmp/standin-site312:$img $P312 -c 'import papermill, nbclient, nbformat, jupyter_client, ipykernel, IPython, jupytext, myst_nb, ipywidgets, anywidget, docutils, jsonschema; from myst_nb.ext.glue import glue; print(\"notebook stack imports on\", __import__(\"sys\").version)'"
  export PYTHONPATH=$repo/src${PYTHONPATH:+:$PYTHONPATH}
else
  site=/tmp/standin-site
  step setup 90 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl .whl-nb/*.whl
  export PYTHONPATH=$repo/src:$site${PYTHONPATH:+:$PYTHONPATH}
fi

pp=($PY benchmarks/paper_profile.py run --out "$state" --profile "$profile" --skip-done)
[ -n "$overrides" ] && pp+=(--overrides "$overrides")
# PRE_CHAPTERS="02_collect 03_train" PARAMS='{"03_train": {"steps": 500}}': only what 04 needs, sooner
[ -n "${PARAMS:-}" ] && pp+=(--params "$PARAMS")
for ch in ${PRE_CHAPTERS:-02_collect 03_train 05_features}; do
  if done_ok $ch; then echo "== $ch: done in an earlier call"; continue; fi
  step "$ch" 300 "${pp[@]}" --chapters $ch
done
if done_ok 05_features && [ ! -f "$state/site_packed" ]; then
  step site_pack 120 $PY benchmarks/site_pack.py "$sitedir" "$out" && [ -f "$out/site_pack.json" ] && cp "$out/site_pack.json" "$state/site_packed"
fi
if done_ok 04_evaluate; then echo "== 04_evaluate: done in an earlier call"
elif [ $(( budget - SECONDS )) -ge "$min04" ]; then
  step 04_evaluate 600 "${pp[@]}" --defaults 04_evaluate
else
  echo "== 04_evaluate: not started ($(( budget - SECONDS )) s left < MIN_04_S=$min04): run this command again"
  printf '04_evaluate\tdeferred\t0\n' >> "$logs/steps.tsv"
fi

# What comes back: summary.json, logs.tar.xz (and the site parts written above)
results=${REPRO_ROOT:-$repo}/results
cp "$state/paper_profile.json" "$logs/" 2>/dev/null
for ch in 02_collect 03_train 04_evaluate 05_features; do cp "$results/$ch.json" "$logs/result_$ch.json" 2>/dev/null; done
cp "$state/chapters/04_evaluate.ipynb" "$logs/" 2>/dev/null
cp -r ${REPRO_ROOT:-$repo}/build/logs "$logs/kernel-logs" 2>/dev/null
tar -cJf "$out/logs.tar.xz" -C "$state" "logs-$call" 2>/dev/null || tar -czf "$out/logs.tar.gz" -C "$state" "logs-$call"
$PY - "$out" "$logs" "$state" <<'PYEOF'
import json, sys, pathlib
out, logs, state = (pathlib.Path(a) for a in sys.argv[1:])
steps = [dict(zip(("step", "rc", "seconds"), l.split("\t"))) for l in (logs / "steps.tsv").read_text().splitlines()]
record = json.loads((state / "paper_profile.json").read_text()) if (state / "paper_profile.json").exists() else {}
# 04's seconds per cell (papermill's own record in the executed notebook), to set beside
# benchmarks/evaluate_cost.py's estimate per cell
cells = []
nb_path = logs / "04_evaluate.ipynb"
if nb_path.exists():
    nb = json.loads(nb_path.read_text())
    for c in nb["cells"]:
        d = c.get("metadata", {}).get("papermill", {}).get("duration")
        if c["cell_type"] == "code" and d is not None:
            src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            first = next((l for l in src.splitlines() if l.strip() and not l.startswith("#")), "")[:70]
            cells.append({"seconds": round(d, 1), "starts": first})
short = {name: {k: e.get(k) for k in ("ok", "default_counts", "wall_s", "peak_rss_sampled_gib", "peak_rss_children_gib",
                                       "timed_out", "error")}
         | {k: e.get("resources", {}).get(k) for k in ("peak_host_memory_gib", "peak_gpu_memory_gib", "peak_gpu_reserved_gib")}
         for name, e in record.get("chapters", {}).items()}
site = json.loads((out / "site_pack.json").read_text()) if (out / "site_pack.json").exists() else None
json.dump({"steps": steps, "chapters": short, "evaluate_cells_s": cells, "site_pack": site,
           "files": sorted(p.name for p in out.iterdir())}, open(out / "summary.json", "w"), indent=1)
print(json.dumps({"steps": steps, "chapters": short, "evaluate_cells_s": cells}, indent=1))
PYEOF
