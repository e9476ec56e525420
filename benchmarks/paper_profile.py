"""Every chapter under the paper's settings on the SDXL-architecture stand-ins: what it costs.

    python benchmarks/paper_profile.py run --out OUTDIR [--chapters 02_collect 03_train ...]
    python benchmarks/paper_profile.py report OUTDIR/paper_profile.json [...] --md benchmarks/paper-profile.md

`run` executes the chapters in order with the `standin` profile (the paper's sampling,
fp16, SAEs of 1280 x 5120 with k 10, batch 4096; random-weight SDXL Turbo / SDXL base
built on the GPU) at the reduced counts of CHAPTER_PARAMETERS, through the same runner
as `make reproduce` (papermill). After each chapter it appends the chapter's wall time,
figure count and the `resources` that the chapter's `results/<name>.json` recorded
(`repro.meter`: images/s, SAE tokens/s, peak GPU and host memory) to
OUTDIR/paper_profile.json, so a run cut short keeps what it measured.

`--defaults NAME ...` runs those chapters at their notebook's default counts instead (issue
#17 asks `04_evaluate` to finish at its defaults within 10 minutes and 32 GB of host memory);
`--skip-done` leaves out chapters that OUTDIR/paper_profile.json already records as ok (a
second device call resumes). Every chapter's host memory is also measured from outside:
the peak of the kernel's memory sampled every 0.2 s (`peak_rss_sampled_gib`, kept even when the
chapter is killed by a time limit: SIGTERM stops the kernel and records the chapter as
timed out) and, once the kernel has exited, its `ru_maxrss` (`peak_rss_children_gib`). The
sample sums the proportional set size (PSS) of the kernel and its children where Linux gives it:
forked workers (ShapesWorld's renderer) share the kernel's pages, and summing their RSS counted
those pages once per worker (55 GiB for a 05 whose kernel held ~4 GiB).

`report` turns one or more such files into the markdown table, with the full-scale
projection (1.5M prompts, 93,750 SAE steps of 4096 tokens) computed from the rates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import sys
import threading
import time
from pathlib import Path

# Reduced counts: every chapter in one GPU session (a few thousand prompts, a few thousand
# SAE steps, a handful of RIEBench edits per category).
CHAPTER_PARAMETERS: dict[str, dict] = {
    "00_overview": {},
    "01_shapesworld": {"n_captions": 64, "n_base": 8, "n_ablation": 16, "n_oracle": 200, "n_grid": 4, "batch_size": 16},
    "02_collect": {"batch_size": 32, "shard_size": 256},
    "03_train": {"log_every": 100, "checkpoint_every": 1000, "stats_batches": 50},
    "04_evaluate": {"n_eval": 8, "n_loop": 8, "n_control": 16, "control_steps": 200, "n_timing": 2, "batch_size": 8},
    "05_features": {"top_m": 16, "n_locality": 4, "batch_size": 8},
    "06_riebench": {"edits": "example", "per_category": 1, "batch_size": 8},
    "07_claims": {},
}

PAPER_PROMPTS = 1_500_000
PAPER_SAE_TOKENS = 93_750 * 4096  # per block: the paper's steps x batch
PAPER_BLOCK_TOKENS = 256  # 16 x 16 positions per image at 512 px
PAPER_STORE_BYTES = PAPER_PROMPTS * 4 * PAPER_BLOCK_TOKENS * 1280 * 2  # four blocks, 16-bit


def _figures(notebook: Path) -> int:
    nb = json.loads(notebook.read_text())
    return sum("image/png" in out.get("data", {}) for cell in nb["cells"] for out in cell.get("outputs", []))


class _RssSampler(threading.Thread):
    """Peak RSS of this process's children (the chapter's kernel and anything it starts), sampled."""

    def __init__(self, period: float = 0.2):
        super().__init__(daemon=True)
        self.period, self.peak, self.stop = period, 0, threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.is_set():
            total = 0
            for child in me.children(recursive=True):
                try:
                    total += _pss(child.pid) or child.memory_info().rss
                except (psutil.Error, OSError):
                    pass
            self.peak = max(self.peak, total)
            self.stop.wait(self.period)


def _pss(pid: int) -> int | None:
    """Proportional set size of `pid` in bytes (shared pages split among their users), None off Linux."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return None


def _kill_children() -> None:
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass


def run(args: argparse.Namespace) -> int:
    import torch

    from repro.errors import ReproError
    from repro.io import provenance
    from repro.notebooks import run_notebook
    from repro.paths import results_dir

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "paper_profile.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {"chapters": {}}
    record["machine"] = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__, "profile": args.profile,
    }
    record.setdefault("commands", []).append("python benchmarks/paper_profile.py run " + " ".join(sys.argv[2:]))
    record["command"] = " && ".join(record["commands"])
    record["provenance"] = provenance()  # this call's argv, device, commit
    chapters = list(dict.fromkeys(args.chapters + args.defaults))
    chapters.sort(key=list(CHAPTER_PARAMETERS).index)

    def save() -> None:
        record_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")

    current: dict = {}

    def on_term(signum, frame):  # a time limit: stop the kernel, keep what was measured
        _kill_children()
        if current:
            entry, sampler, started = current["entry"], current["sampler"], current["started"]
            entry.update(ok=False, error=f"stopped by signal {signum} (time limit) after "
                         f"{time.perf_counter() - started:.0f} s", timed_out=True,
                         wall_s=round(time.perf_counter() - started, 1),
                         peak_rss_sampled_gib=round(sampler.peak / 2**30, 2))
            record["chapters"][current["name"]] = entry
            save()
        sys.exit(124)

    signal.signal(signal.SIGTERM, on_term)
    for name in chapters:
        if args.skip_done and record["chapters"].get(name, {}).get("ok"):
            print(f"== {name}: done already, skipped", flush=True)
            continue
        at_defaults = name in args.defaults
        params = {"profile": args.profile, **({} if at_defaults else CHAPTER_PARAMETERS[name]),
                  **json.loads(args.params or "{}").get(name, {})}
        if args.overrides:
            params["overrides"] = json.loads(args.overrides)
        print(f"== {name} {params}{' (default counts)' if at_defaults else ''}", flush=True)
        started = time.perf_counter()
        entry: dict = {"parameters": params, "default_counts": at_defaults}
        sampler = _RssSampler()
        sampler.start()
        current.update(name=name, entry=entry, sampler=sampler, started=started)
        try:
            executed = run_notebook(name, params, output=out / "chapters" / f"{name}.ipynb")
            entry["ok"] = True
            entry["figures"] = _figures(executed)
            result = json.loads((results_dir() / f"{name}.json").read_text())
            entry["resources"] = result.get("resources", {})
            entry["context"] = result.get("context", {})
            if name == "02_collect":
                entry["numbers"] = {k: v for k, v in result["numbers"].items() if not isinstance(v, (list, dict))}
        except ReproError as exc:
            entry["ok"] = False
            entry["error"] = str(exc)
        sampler.stop.set()
        sampler.join()
        current.clear()
        entry["wall_s"] = round(time.perf_counter() - started, 1)
        entry["peak_rss_sampled_gib"] = round(sampler.peak / 2**30, 2)
        # ru_maxrss of the largest child waited for so far (the kernels: this one, if it is the largest yet)
        entry["peak_rss_children_gib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 2**30, 2)
        record["chapters"][name] = entry
        save()
        print(f"   {name}: {'ok' if entry['ok'] else 'FAILED'} in {entry['wall_s']} s, peak RSS {entry['peak_rss_sampled_gib']} GiB "
              f"{entry.get('resources', entry.get('error'))}", flush=True)
    return 0


def _hours(seconds: float | None) -> str:
    if not seconds:
        return "—"
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.1f} min"


def report(args: argparse.Namespace) -> int:
    chapters, machine, commands = {}, {}, []
    for path in args.records:
        rec = json.loads(Path(path).read_text())
        chapters.update(rec["chapters"])
        machine = rec.get("machine", machine)
        commands.append(rec.get("command", ""))
    rows = ["| chapter | ran | wall time | peak GPU memory (allocated / reserved) | peak host memory | images | images/s "
            "| SAE tokens/s per block | analysed tokens/s | figures |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name in sorted(chapters):
        e = chapters[name]
        r = e.get("resources", {})
        gpu = (f"{r['peak_gpu_memory_gib']:.1f} / {r['peak_gpu_reserved_gib']:.1f} GiB"
               if r.get("peak_gpu_memory_gib") is not None else "—")
        rows.append(
            f"| {name} | {'yes' if e['ok'] else 'FAILED: ' + e.get('error', '')[:120]} | {e['wall_s']:.0f} s | {gpu} | "
            f"{r.get('peak_host_memory_gib', '—')} GiB | {r.get('images', '—')} | {r.get('images_per_s') or '—'} | "
            f"{r.get('sae_tokens_per_s_per_block') or '—'} | {r.get('analysed_tokens_per_s') or '—'} | {e.get('figures', '—')} |")
    train = chapters.get("03_train", {}).get("resources", {})
    features = chapters.get("05_features", {}).get("resources", {})
    riebench = chapters.get("06_riebench", {})
    lines = ["## Projected full scale (from the rates above)", "",
             "| stage | paper scale | rate measured | projected time on this GPU |", "|---|---|---|---|"]
    # Collection end to end (generation, capture, copies, shard writing), as the chapter timed it.
    collect_rate = chapters.get("02_collect", {}).get("numbers", {}).get("images_per_s")
    if collect_rate:
        lines.append(f"| collection (02), end to end | {PAPER_PROMPTS:,} prompts, 4 blocks, store {PAPER_STORE_BYTES / 1e12:.1f} TB "
                     f"in 16-bit | {collect_rate:.1f} images/s | {_hours(PAPER_PROMPTS / collect_rate)} |")
    if train.get("sae_tokens_per_s_per_block"):
        lines.append(f"| SAE training (03) | {PAPER_SAE_TOKENS:,} tokens per block, {train.get('sae_blocks')} SAEs side by side "
                     f"| {train['sae_tokens_per_s_per_block']:,} tokens/s per block | {_hours(PAPER_SAE_TOKENS / train['sae_tokens_per_s_per_block'])} |")
    if features.get("analysed_tokens_per_s"):
        total = PAPER_PROMPTS * PAPER_BLOCK_TOKENS * 4
        lines.append(f"| feature analysis (05) | {total:,} tokens (whole store, 4 blocks) "
                     f"| {features['analysed_tokens_per_s']:,} tokens/s | {_hours(total / features['analysed_tokens_per_s'])} |")
    if riebench.get("ok"):
        ctx = riebench.get("context", {})
        n = ctx.get("n_edits") or ctx.get("edits")
        if isinstance(n, int) and n:
            per_edit = riebench["resources"]["image_seconds"] / n
            lines.append(f"| RIEBench (06), same grid | 296 edits | {per_edit:.1f} s of generation per edit "
                         f"| {_hours(296 * per_edit)} |")
    lines.append("")
    if train.get("sae_tokens_per_s_per_block"):
        need = train["sae_tokens_per_s_per_block"] * train.get("sae_blocks", 4) * 1280 * 2
        lines += [f"At that SAE rate the store must deliver {need / 1e9:.1f} GB/s of 16-bit updates: the 3.9 TB "
                  "store lives on disk, read one group of shards at a time, so its disk sets the real pace. "
                  "Wall times include starting the kernel and building the stand-ins (10-20 s per chapter).", ""]
    if args.before:
        before = json.loads(Path(args.before).read_text())["chapters"]
        lines += ["## What the first run showed, and the fixes", "",
                  "The same chapters run once before two fixes in the library: SAE batches were gathered "
                  "on the CPU and copied to the GPU one by one (now `StoreSource(device=...)` moves each "
                  "group of shards to the GPU once and gathers there), and the VAE decoded whole batches "
                  "(now one image at a time, `vae.enable_slicing()` in `load_pipeline`).", "",
                  "| chapter | measure | before | after |", "|---|---|---|---|"]
        measures = (("peak_gpu_reserved_gib", "peak GPU memory reserved (GiB)"), ("peak_gpu_memory_gib", "peak GPU memory allocated (GiB)"),
                    ("peak_host_memory_gib", "peak host memory (GiB)"), ("sae_tokens_per_s_per_block", "SAE tokens/s per block"))
        for name in sorted(set(before) & set(chapters)):
            b, a = before[name].get("resources", {}), chapters[name].get("resources", {})
            for key, label in measures:
                if b.get(key) and a.get(key) and abs(b[key] - a[key]) > 0.25 * max(abs(a[key]), 1e-9):
                    lines.append(f"| {name} | {label} | {b[key]:,} | {a[key]:,} |")
        lines.append("")
    text = "\n".join([
        "# The paper profile on SDXL-architecture stand-ins: cost per chapter", "",
        f"GPU: {machine.get('gpu')}; {machine.get('cpus')} CPUs; torch {machine.get('torch')}, "
        f"diffusers {machine.get('diffusers')}; profile `{machine.get('profile')}`.", "",
        "Measured on the GPU with (the wheels of `benchmarks/README.md` installed, `PYTHONPATH=src`):", "",
        "```bash", *[c for c in commands if c], "```", "",
        "and turned into this page with:", "",
        "```bash", "python benchmarks/paper_profile.py report " + " ".join(sys.argv[2:]), "```", "",
        *rows, "", *lines, "",
    ])
    Path(args.md).write_text(text) if args.md else print(text)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--profile", default="standin")
    r.add_argument("--overrides", default=None, help="JSON of profile fields to change (e.g. to try it on CPU)")
    r.add_argument("--chapters", nargs="*", default=None, choices=list(CHAPTER_PARAMETERS),
                   help="chapters at the reduced counts of CHAPTER_PARAMETERS (default: all, unless --defaults is given)")
    r.add_argument("--defaults", nargs="+", default=[], choices=list(CHAPTER_PARAMETERS),
                   help="chapters to run at their notebook's default counts")
    r.add_argument("--params", default=None, help='JSON {chapter: {notebook parameter: value}} on top of the '
                   'reduced counts, e.g. \'{"03_train": {"steps": 500}}\'')
    r.add_argument("--skip-done", action="store_true", help="leave out chapters OUTDIR/paper_profile.json records as ok")
    r.set_defaults(fn=run)
    p = sub.add_parser("report")
    p.add_argument("records", nargs="+")
    p.add_argument("--md", default=None, help="write the markdown here (default: print it)")
    p.add_argument("--before", default=None, help="a record of the same chapters before a change, to compare")
    p.set_defaults(fn=report)
    args = parser.parse_args(argv)
    if args.action == "run" and args.chapters is None:
        args.chapters = [] if args.defaults else list(CHAPTER_PARAMETERS)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
