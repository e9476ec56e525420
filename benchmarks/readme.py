"""Writes benchmarks/README.md from the result files under benchmarks/results/.

    python benchmarks/readme.py           # rewrite README.md
    python benchmarks/readme.py --check   # exit 1 if README.md differs from what the files give, or if
                                          # README.md or investigations.md cites a file that is missing

FIGURES says which figures are the headlines: each names its topic, a result file (or a folder of
them) and how to read the figure from its JSON. The command, device and date beside each figure
come from the file itself (`repro.io.provenance`, or the keys older scripts kept); where a file
did not record one, the table says "not recorded". Every other JSON file is counted per folder at
the end; what the past runs found, and the files each finding cites, is `investigations.md`.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NOT_RECORDED = "not recorded"
CHECKED = ("README.md", "investigations.md")  # the pages whose every cited file must exist
LINK = re.compile(r"\]\(([^)#\s]+)[^)]*\)")  # [text](target), the target without its #anchor
NAMED = re.compile(r"`([\w./-]+\.(?:json|jsonl|log|tsv|txt|md|py|sh))`")  # a file named in code: `x/y.json`

HEADER = """\
# Benchmarks

What the library costs on the paths users run, and the kernels under them. Written by
`python benchmarks/readme.py` from the JSON files in [`results/`](results/); edit that script
(its `FIGURES` and this header), not this file. What the past runs found, and why today's
figures are what they are: [`investigations.md`](investigations.md).

Every benchmark script writes JSON with its provenance (`repro.io.provenance`: the command line,
the device, the git commit, the date, the torch version). Older files kept less: where a file
does not say which command, device or date made it, the tables say "not recorded".

```bash
bash benchmarks/gpu_ceiling.sh OUT                 # one GPU, one call (~9 min): the rows from one GPU below
bash benchmarks/gpu_ceiling.sh OUT --cpu-dry-run   # the same steps, tiny, on the CPU
python benchmarks/readme.py                        # after copying result files into results/
```

`gpu_ceiling.sh` needs the wheels it installs in `.whl` (diffusers, eai-sparsify 1.3.3 and their
dependencies); the chapters on the GPU image (`standin_chapters.sh`, `paper_profile.py`) also need
the notebook stack listed in [`wheels-nb.txt`](wheels-nb.txt). Other suites: `bash
benchmarks/multi_gpu.sh OUT` (several GPUs, [`multi_gpu.md`](multi_gpu.md)), `bash
benchmarks/standin_chapters.sh OUT` (04 at its default counts, 05's site),
`python benchmarks/paper_profile.py run --out OUT` (every chapter, [`paper-profile.md`](paper-profile.md)),
`python benchmarks/feature_pages.py` ([`feature_pages.md`](feature_pages.md)),
`python benchmarks/bad_inputs.py` ([`bad_inputs.md`](bad_inputs.md)); the ShapesWorld models'
training: [`toy_training.md`](toy_training.md).
"""


@dataclass(frozen=True)
class Figure:
    topic: str
    title: str
    path: str  # under results/: one JSON file, or a folder of them
    value: Callable[[Any], str]  # the file's JSON (a folder: {file name: JSON}) -> the figure


def rate(x: float) -> str:
    """2538814 -> 2.54M, 153720 -> 154k, 219.6 -> 219.6."""
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k" if x >= 1e4 else f"{x:.1f}"


def per_size(rows: list[dict], key: str = "tokens_per_s") -> str:
    return " / ".join(rate(r[key]) for r in rows) + " tokens/s at " + " / ".join(f"{r['n_features']:,}" for r in rows)


def train_row(i: int) -> Callable[[dict], str]:
    def value(doc: dict) -> str:
        r = doc["rows"][i]
        memory, store = r["tensor"], r["store"]
        return (f"{rate(memory['end_to_end_tokens_per_s'])} / {rate(store['end_to_end_tokens_per_s'])} tokens/s "
                f"end to end, {rate(memory['steady_tokens_per_s'])} / {rate(store['steady_tokens_per_s'])} "
                f"steady (the step alone {rate(r['step']['tokens_per_s'])})")
    return value


def quality(doc: dict) -> str:
    ours, peer = doc["rows"]["ours"], doc["rows"]["sparsify"]
    return (f"held-out FVU {ours['heldout_fvu']:.3f} vs {peer['heldout_fvu']:.3f}; atoms recovered "
            f"{ours['atoms_recovered']:.2f} vs {peer['atoms_recovered']:.2f}; {rate(ours['tokens_per_s'])} vs "
            f"{rate(peer['tokens_per_s'])} tokens/s end to end")


def sae_sweep(doc: dict) -> str:
    """toy_sae_sweep.py: held-out EV and median cosine to init over the configs, and that cosine by firing."""
    rows = doc["rows"]
    span = lambda key: f"{min(r[key] for r in rows):.3f}-{max(r[key] for r in rows):.3f}"  # noqa: E731
    by_group = lambda name: [g["median_cos"] for r in rows for g in r["cos_by_firing"]  # noqa: E731
                             if g["group"] == name and g["median_cos"] is not None]
    rare, common = by_group("Q1 of fired"), by_group("Q4 of fired")
    return (f"held-out EV {span('heldout_ev')}, EV gain over the last doubling {span('ev_gain_last_doubling')}, "
            f"median decoder cosine to init {span('median_cos_to_init')} (rarest firing quartile "
            f"{min(rare):.2f}-{max(rare):.2f}, commonest {min(common):.2f}-{max(common):.2f}); "
            f"{sum(r['converged'] for r in rows)} of {len(rows)} converged by 03's criterion")


def _inside_outside(row: dict) -> str:
    """A toy_sae_sweep row's cosine to init, split at the held-out updates' principal subspace."""
    sub = row["cos_by_subspace"]
    return (f"inside the held-out updates' {sub['variance_share']:.0%} subspace ({sub['rank']} of {sub['d']} "
            f"directions) {sub['median_cos_inside']:.3f}, outside {sub['median_cos_outside']:.3f} (column norm "
            f"outside {sub['median_start_norm_outside']:.2f} at init, {sub['median_norm_outside']:.2f} now)")


def sae_subspace(doc: dict) -> str:
    """toy_sae_sweep.py's first row: where its cosine to init lives (inside / outside the data's span)."""
    r = doc["rows"][0]
    return f"{r['steps']:,} steps: median decoder cosine to init {r['median_cos_to_init']:.3f}; {_inside_outside(r)}"


def sae_plateau(doc: dict) -> str:
    """toy_sae_sweep.py's first row at half and all its steps: has the cosine to init stopped falling?"""
    r = doc["rows"][0]
    return (f"median decoder cosine to init {r['median_cos_to_init_half']:.3f} at {r['half_step']:,} steps, "
            f"{r['median_cos_to_init']:.3f} at {r['steps']:,}; EV gain over that doubling "
            f"{r['ev_gain_last_doubling']:.4f}, held-out EV {r['heldout_ev']:.3f}; {_inside_outside(r)}")


def ceiling_rate(part: str, steady: str, end_to_end: str) -> Callable[[dict], str]:
    return lambda doc: (f"{doc[part][steady]['images_per_s']:.1f} images/s steady, "
                        f"{doc[part][end_to_end]['images_per_s']:.1f} end to end ({doc[part][steady]['n']:,} prompts)")


def generation(doc: dict) -> str:
    g = doc["generate"]
    return (f"{g['direct_prefetched_generation']['images_per_s']:.1f} images/s (the diffusers pipeline: "
            f"{g['plain_generation']['images_per_s']:.1f})")


def store_read(doc: dict) -> str:
    s = doc["read"]["suite"]
    cold = s["reader_verified_default_groups_gpu_batches_cold_cache"]
    disk = s[f"disk_read_cold_cache_{s['threads_N']}_threads"]
    return (f"{rate(cold['tokens_per_s_per_block'])} tokens/s per block at {cold['file_GBps']:.2f} GB/s, "
            f"the disk alone {disk['GBps']:.2f} GB/s")


def scaling(part: str, unit: str) -> Callable[[dict], str]:
    def value(doc: dict) -> str:
        p = doc[part]
        one, many = (p["one_gpu"].get("images_per_s") or p["one_gpu"]["mean"],
                     p["n_gpus"].get("images_per_s") or p["n_gpus"]["mean"])
        text = f"{p['efficiency']:.2f}x linear ({rate(one)} -> {rate(many)} {unit})"
        if "efficiency_weak" in p:
            text += f"; {p['efficiency_weak']:.2f}x at twice the global batch"
        return text
    return value


def analysis(doc: dict) -> str:
    return (f"{rate(doc['one_read_cold']['tokens_per_s'])} tokens/s, page cache dropped "
            f"({rate(doc['one_read_warm']['tokens_per_s'])} warm; one block at a time: "
            f"{rate(doc['per_block_cold']['tokens_per_s'])})")


def user_path(key: str) -> Callable[[dict], str]:
    """ceiling.py's `user` part: one entry point end to end (gpu_ceiling.sh sets it beside the bare UNet)."""
    def value(doc: dict) -> str:
        return f"{doc['user'][key]['images_per_s']:.1f} images/s end to end, {doc['user'][key]['seconds']:.1f} s"
    return value


def chapters_wall(doc: dict) -> str:
    ch = doc["chapters"]
    slowest = max(ch, key=lambda c: ch[c]["wall_s"])
    return (f"{sum(c['wall_s'] for c in ch.values()):.0f} s for {len(ch)} chapters (longest: {slowest}, "
            f"{ch[slowest]['wall_s']:.0f} s)")


def evaluate_defaults(doc: dict) -> str:
    c = doc["chapters"]["04_evaluate"]
    return f"{c['wall_s']:.1f} s, peak host memory {c['peak_host_memory_gib']} GiB, GPU {c['peak_gpu_memory_gib']} GiB"


def toy_book(docs: dict) -> str:
    walls = {d["notebook"]: d["resources"]["wall_s"] for d in docs.values()}
    return f"{sum(walls.values()):,.0f} s in {len(walls)} chapters (the sum of their own `wall_s`)"


def verdicts(doc: dict) -> str:
    return ", ".join(f"{verdict}: {n}" for verdict, n in doc["numbers"]["counts"].items())


def projection(doc: dict) -> str:
    h = doc["hours"]
    return f"{h['total_store_path']:.2f} h on the store path; floor {h['floor_with_riebench']:.2f} h"


def page(doc: dict) -> str:
    return (f"first render {doc['first_render_s_median']:.2f} s, "
            f"{doc['mb_before_interaction']:.2f} MB before the first interaction")


def toy_stage(stage: str) -> Callable[[dict], str]:
    def value(doc: dict) -> str:
        r = doc["rates"]
        return (f"{r[f'{stage}/graph']['steps_per_s']} steps/s (batch {r[f'{stage}/graph']['batch']}; "
                f"the loop before: {r[f'{stage}/legacy']['steps_per_s']})")
    return value


def prompt_following(doc: dict) -> str:
    return ", ".join(f"{k} {v['all']:.0%}" for k, v in doc.items() if k not in ("vae", "provenance")) + \
        f"; the VAE's ceiling {doc['vae']['reconstructions']['all']:.0%}"


def sparsify(doc: dict) -> str:
    sizes = sorted(int(k.split("_n")[1].split("_")[0]) for k in doc if k.endswith("nodead_tokens_per_s"))
    return (" / ".join(rate(doc[f"sparsify_n{n}_tokens_per_s"]) for n in sizes) + " tokens/s at "
            + " / ".join(f"{n:,}" for n in sizes) + " (no dead latents: "
            + " / ".join(rate(doc[f"sparsify_n{n}_nodead_tokens_per_s"]) for n in sizes) + ")")


def topk(doc: dict) -> str:
    rows = {(r["n"], r["variant"]): r["ms"] for r in doc["results"] if r["k"] == 10 and r["input"] == "dense"}
    sizes = sorted({n for n, _ in rows})
    return "k 10: " + ", ".join(f"{rows[n, 'torch_sorted']:.2f} -> {rows[n, 'fused_rule']:.2f} ms at {n:,}"
                                for n in sizes)


def unet(doc: dict) -> str:
    batches = [k for k in doc if k.startswith("B") and k[1:].isdigit()]
    return ", ".join(f"{doc[b]['images_per_s']:.1f} images/s at batch {b[1:]} ({doc[b]['hooked_images_per_s']:.1f} "
                     "hooked)" for b in batches)


def fused_numbers(doc: dict) -> str:
    worst = max(e for r in doc["numbers"] for e in r["grad_rel_err"].values())
    ok = sum(r["ok"] for r in doc["numbers"])
    return f"{ok} of {len(doc['numbers'])} checks within tolerance; largest gradient relative error {worst:.1e}"


def read_cpu(doc: dict) -> str:
    return (f"verified {rate(doc['read_after_verify']['tokens_per_s_per_block'])}, unverified "
            f"{rate(doc['read_after_noverify']['tokens_per_s_per_block'])} tokens/s per block; sha256 "
            f"{doc['sha256_memory']['GBps']:.2f} GB/s")


def calib(doc: dict) -> str:
    return (f"bare UNet {doc['unet_fwd_B32_img_per_s']:.1f} images/s at batch 32; a TopK step without AuxK "
            f"{rate(doc['sae_step_bf16_tokens_per_s'])} tokens/s")


USER = "user"
DIAGNOSTIC = "diagnostic"
TOPICS = {  # topic -> (section, what runs it)
    "Training SAEs": (USER, "`train_saes` and `repro train`: `benchmarks/train_speed.py`, `benchmarks/sae_quality.py`, "
                            "`benchmarks/multi_gpu.py`, `benchmarks/toy_sae_sweep.py`"),
    "Collecting and reading activations": (USER, "`repro collect`, streaming into SAEs and reading a store: "
                                                 "`benchmarks/ceiling.py`, `benchmarks/multi_gpu.py`"),
    "Analysing features": (USER, "05's pass over a store (`analyse_store`): `benchmarks/analysis_speed.py`"),
    "Chapters": (USER, "The notebooks as `make reproduce` and `repro notebook run` run them: "
                       "`benchmarks/paper_profile.py`, `benchmarks/standin_chapters.sh`, `benchmarks/projection.py`"),
    "Feature pages": (USER, "05's feature browser in headless Chromium: `benchmarks/feature_pages.py`"),
    "ShapesWorld models": (USER, "`repro toy train` and the shipped models: `benchmarks/toy_train_speed.py`, "
                                 "`benchmarks/toy_eval.py`"),
    "The SAE step": (DIAGNOSTIC, "One training step, timed alone: `benchmarks/sae_speed.py`, "
                                 "`benchmarks/peer/sparsify_step_bench.py`, `benchmarks/fused_check.py`"),
    "Kernels and hardware": (DIAGNOSTIC, "`benchmarks/topk_speed.py`, `benchmarks/unet_speed.py`, "
                                         "`benchmarks/read_verify.py`, `benchmarks/peer/gpu_calibrate.py`"),
}

H = "gpu_ceiling_h200_fourth/"
FIGURES = [
    *(Figure("Training SAEs", f"`train_saes`, d 1280, {n:,} features, k 10, batch 4096, 400 steps: from memory / "
             "from a page-cached store", "h100_train_speed/train_speed.json", train_row(i))
      for i, n in enumerate((5120, 20480, 81920))),
    *(Figure("Training SAEs", f"`train_saes`, d 1280, {n:,} features, k 10, batch 4096, 400 steps: from memory / "
             "from a page-cached store (gpu_ceiling.sh's default rows)", "h100_user_path/train_speed.json", train_row(i))
      for i, n in enumerate((5120, 20480, 81920))),
    Figure("Training SAEs", "against sparsify 1.3.3's loop on a planted dictionary, 5,120 features, 2,000 steps",
           "h100_sae_quality/sae_quality_2000.json", quality),
    Figure("Training SAEs", "the same, 3,000 steps", "h100_sae_quality/sae_quality_3000.json", quality),
    Figure("Training SAEs", "toy SAEs (up.0.1) trained as 03 trains them, expansion {4, 8, 16} x k {10, 16}, "
           "3,000 steps, one CPU thread", "toy_sae_sweep_cpu.json", sae_sweep),
    Figure("Training SAEs", "the x4 k10 toy SAE's cosine to init, split at the updates' principal subspace",
           "toy_sae_sweep_cpu_subspace.json", sae_subspace),
    Figure("Training SAEs", "the x4 k10 toy SAE on `toy-full`'s 8,000 prompts for 32,000 steps (four times "
           "`toy-full`'s), two CPU threads", "toy_sae_sweep_cpu_32k.json", sae_plateau),
    Figure("Training SAEs", "block-parallel training on 2 GPUs, four 1280 x 5120 SAEs (per block)",
           "multi_gpu_h200x2.json", scaling("train_block", "tokens/s")),
    Figure("Training SAEs", "data-parallel training on 2 GPUs, one 1280 x 20480 SAE",
           "multi_gpu_h200x2.json", scaling("train_data", "tokens/s")),
    Figure("Collecting and reading activations", "`repro collect` as a fresh process (start, model, capture, every "
           "shard written), standin-sdxl-turbo, 4,096 prompts, batch 32", "h100_user_path/user.json",
           user_path("collect_cli")),
    Figure("Collecting and reading activations", "the same `collect` call with the model loaded",
           "h100_user_path/user.json", user_path("collect_model_loaded")),
    Figure("Collecting and reading activations", "streaming 4,096 prompts into four fresh 1280 x 5120 SAEs "
           "(`train_saes` over `StreamSource`)", "h100_user_path/user.json", user_path("stream_four_saes")),
    Figure("Collecting and reading activations", "collection to a store, standin-sdxl-turbo, batch 32",
           H + "h_ceiling.json", ceiling_rate("collect", "after_marginal", "after")),
    Figure("Collecting and reading activations", "streaming into four 1280 x 5120 SAEs",
           H + "h_ceiling.json", ceiling_rate("stream", "stream_training_after_marginal", "stream_training_after")),
    Figure("Collecting and reading activations", "generation alone, the direct loop with text prepared ahead",
           H + "h_ceiling.json", generation),
    Figure("Collecting and reading activations", "reading a verified 13.8 GB store from disk (page cache dropped), "
           "batches on the GPU", H + "h_ceiling.json", store_read),
    Figure("Collecting and reading activations", "collection on 2 GPUs, 512 prompts",
           "multi_gpu_h200x2.json", scaling("collection", "images/s")),
    Figure("Analysing features", "four 1280 x 5120 SAEs over a 2.75 GB store, all blocks from one read",
           H + "h_analysis.json", analysis),
    Figure("Chapters", "every chapter, standin profile, reduced counts", "paper_profile_h100.json", chapters_wall),
    Figure("Chapters", "04_evaluate at its default counts, standin profile",
           "standin_chapters_h200/call4_04_defaults_summary.json", evaluate_defaults),
    Figure("Chapters", "`make reproduce`, toy profile", "toy_book_claims", toy_book),
    Figure("Chapters", "the verdict table of 07_claims, toy profile", "toy_book_claims/07_claims.json", verdicts),
    Figure("Chapters", "toy-full profile on one GPU (02, 03, 05, 00, 07)", "toy_full_h100/paper_profile.json",
           chapters_wall),
    Figure("Chapters", "the verdict table of 07_claims, toy-full profile", "toy_full_h100/07_claims.json", verdicts),
    Figure("Chapters", "the paper's scale on one H200, projected from the measured rates",
           "projection_h200_fourth.json", projection),
    Figure("Feature pages", "4 x 5,120 features of synthetic data, standalone page", "feature_pages.json", page),
    Figure("Feature pages", "the standin chapters' four SAEs, standalone page", "feature_pages_standin.json", page),
    Figure("Feature pages", "the standin chapters' four SAEs inside the built book",
           "feature_pages_book_standin_data_static.json", page),
    *(Figure("ShapesWorld models", f"{stage} training step, CUDA graph", "toy_train_speed_h200.json", toy_stage(stage))
      for stage in ("vae", "base", "turbo")),
    Figure("ShapesWorld models", "the shipped models' prompt following, 500 held-out captions (all attributes right)",
           "toy_eval_shipped.json", prompt_following),
    Figure("The SAE step", "fused step, CUDA graph, d 1280, k 10, batch 4096, 10 % dead",
           H + "h_sae_fused.json", lambda d: per_size(d["results"])),
    Figure("The SAE step", "the same, dead latents found by the step's counters",
           H + "h_sae_fused_counters.json", lambda d: per_size(d["results"])),
    Figure("The SAE step", "dense reference step, CUDA graph", H + "h_sae_graph.json",
           lambda d: per_size(d["results"])),
    Figure("The SAE step", "sparse `fast` step, eager", H + "h_sae_fast.json", lambda d: per_size(d["results"])),
    Figure("The SAE step", "EleutherAI sparsify 1.3.3's step, 10 % dead", H + "h_sparsify.json", sparsify),
    Figure("The SAE step", "fused step, CUDA graph", "h100_train_speed/sae_fused.json",
           lambda d: per_size(d["results"])),
    Figure("The SAE step", "fused loss against the reference, bf16", H + "e1_fused_check.json", fused_numbers),
    Figure("Kernels and hardware", "exact TopK over 4,096 rows: torch.topk -> `fused.topk`", H + "h_topk.json", topk),
    Figure("Kernels and hardware", "bare UNet of standin-sdxl-turbo, fp16, 512 px", H + "h_unet.json", unet),
    Figure("Kernels and hardware", "the same, beside the user rows of h100_user_path", "h100_user_path/unet.json", unet),
    Figure("Kernels and hardware", "the peer's calibration: bare UNet, bare TopK step",
           "gpu_ceiling_h200_alone/calib.json", calib),
    Figure("Kernels and hardware", "reading a synthetic 688 MB store, batches on the CPU", "read_verify_cpu_after.json",
           read_cpu),
]


def load(path: str) -> Any:
    """A result file's JSON, or a folder's {file name: JSON}."""
    full = RESULTS / path
    if full.is_dir():
        return {p.name: json.loads(p.read_text()) for p in sorted(full.glob("*.json"))}
    return json.loads(full.read_text())


def records(doc: Any) -> list[dict]:
    """The provenance records of a file's JSON: its `provenance` (one, or one per part), else its top level."""
    prov = doc.get("provenance") if isinstance(doc, dict) else None
    if isinstance(prov, dict) and prov and all(isinstance(v, dict) for v in prov.values()):
        return list(prov.values())
    return [prov] if isinstance(prov, dict) else [doc] if isinstance(doc, dict) else []


def command(doc: Any) -> str:
    for rec in records(doc) + [doc if isinstance(doc, dict) else {}]:
        if isinstance(rec.get("argv"), list):
            return shell(rec["argv"])
        if isinstance(rec.get("command"), str):
            return rec["command"]
    return NOT_RECORDED


def shell(argv: list[str]) -> str:
    """An argv as one would type it: the interpreter as `python`, a console script by its name."""
    argv = list(argv)
    if any("ipykernel_launcher" in a for a in argv):  # chapters run before the runner exported its command
        return "a chapter's kernel (the runner's command not recorded)"
    if argv and Path(argv[0]).name.startswith("python"):
        argv[0] = "python"
        if len(argv) > 1 and argv[1].startswith("/") and not argv[1].endswith(".py"):
            argv = [Path(argv[1]).name, *argv[2:]]
    elif argv and argv[0].endswith(".py"):  # older files kept sys.argv, without the interpreter
        argv.insert(0, "python")
    return shlex.join(argv)


def device(doc: Any) -> str:
    # a GPU's name wherever the file gives one, before provenance's "device", which names the CPU when
    # the process had not started CUDA by the time it was written
    recs = records(doc) + [doc if isinstance(doc, dict) else {}]
    for keys in (("device_name", "gpu", "machine"), ("device",)):
        for rec in recs:
            for key in keys:
                name = rec.get(key)
                if key == "machine":  # paper_profile.py's own record: a dict with the GPU's name
                    name = name.get("gpu") if isinstance(name, dict) else None
                if isinstance(name, str) and name:
                    return name
    return NOT_RECORDED


def date(doc: Any) -> str:
    for rec in records(doc) + [doc if isinstance(doc, dict) else {}]:
        if isinstance(rec.get("created"), str):
            return rec["created"][:10]
    return NOT_RECORDED


def same_or_list(values: list[str]) -> str:
    return "; ".join(dict.fromkeys(values))


def cell(text: str, code: bool = False) -> str:
    text = text.replace("|", "\\|")
    return f"`{text}`" if code and text != NOT_RECORDED else text


def row(figure: Figure) -> str:
    doc = load(figure.path)
    docs = list(doc.values()) if (RESULTS / figure.path).is_dir() else [doc]
    what = {k: same_or_list([f(d) for d in docs]) for k, f in (("command", command), ("device", device))}
    dates = sorted({date(d) for d in docs})
    link = f"results/{figure.path}" + ("/" if (RESULTS / figure.path).is_dir() else "")
    return (f"| {cell(figure.title)} | {cell(figure.value(doc))} | {cell(what['command'], code=True)} | "
            f"{cell(what['device'])} | {cell(' to '.join([dates[0], dates[-1]]) if len(dates) > 1 else dates[0])} | "
            f"[{link}]({link}) |")


def table(topic: str) -> list[str]:
    _, runs = TOPICS[topic]
    return [f"### {topic}", "", f"{runs}.", "", "| figure | value | command | device | date | file |",
            "|---|---|---|---|---|---|", *(row(f) for f in FIGURES if f.topic == topic), ""]


def other_files() -> list[str]:
    """Every JSON file under results/ not in the tables, counted per folder."""
    shown = set()
    for f in FIGURES:
        full = RESULTS / f.path
        shown |= set(full.glob("*.json")) if full.is_dir() else {full}
    folders: dict[Path, list[Path]] = {}
    for p in sorted(RESULTS.rglob("*.json")):
        if p not in shown:
            folders.setdefault(p.parent, []).append(p)
    lines = ["## Other result files", "",
             "The JSON files the tables above do not show, per folder: the runs behind "
             "[`investigations.md`](investigations.md), earlier sessions and before/after pairs.", "",
             "| folder | JSON files | with their command recorded |", "|---|---|---|"]
    for folder, files in folders.items():
        rel = folder.relative_to(HERE).as_posix() + "/"
        recorded = sum(command(json.loads(p.read_text())) != NOT_RECORDED for p in files)
        lines.append(f"| [{rel}]({rel}) | {len(files)} | {recorded} |")
    return lines + [""]


def render() -> str:
    lines = [HEADER]
    for section, heading in ((USER, "## What users run"),
                             (DIAGNOSTIC, "## Diagnostics: the kernels and steps under them")):
        lines += [heading, ""]
        for topic, (where, _) in TOPICS.items():
            if where == section:
                lines += table(topic)
    return "\n".join(lines + other_files())


def missing_citations(markdown: str, base: Path = HERE) -> list[str]:
    """The files `markdown` cites that do not exist: link targets (beside `base`) and files named in
    code spans (beside `base` or from the repository's root); fenced command blocks are left out."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    links = [t for t in LINK.findall(text) if "://" not in t]
    missing = [t for t in links if not (base / t).exists()]
    named = NAMED.findall(re.sub(r"\[[^\]]*\]\([^)]*\)", "", text))  # a link's text names its target
    missing += [t for t in named if not ((base / t).exists() or (base.parent / t).exists())]
    return list(dict.fromkeys(missing))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with README.md instead of writing it, and check "
                    "that every file README.md and investigations.md cite exists")
    args = ap.parse_args(argv)
    text, target = render(), HERE / "README.md"
    if args.check:
        problems = [] if target.read_text() == text else [
            f"{target} is not what `python benchmarks/readme.py` writes from results/: run it"]
        problems += [f"{name} cites {cited}, which does not exist"
                     for name in CHECKED for cited in missing_citations((HERE / name).read_text())]
        print("\n".join(problems), file=sys.stderr, end="\n" if problems else "")
        return 1 if problems else 0
    from repro.io import write_bytes_atomic

    write_bytes_atomic(target, text.encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
