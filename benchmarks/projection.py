"""Issue #17's paper-scale projection, computed from measured rates (one H200), as markdown.

    python benchmarks/projection.py [--md OUT.md] [--json OUT.json]
    python benchmarks/projection.py --run OUT   # the files of one `gpu_ceiling.sh OUT` call instead

Reads the result files named in SOURCES (all under benchmarks/results/; with `--run OUT`, the
GPU rows from the files that one `bash benchmarks/gpu_ceiling.sh OUT` call wrote with STEPS
including `unet ceiling sae_fused analysis`), scales each rate to the
paper's size (1.5M prompts, 4 blocks of 16x16 positions: 384M tokens per block), and prints the
table of stages, the total of the store path (collect, train from the store, analyse the
store, RIEBench) and the floor that one H200 with this disk allows: one pass of the bare
UNet over the prompts plus one sequential read of the store (what any analysis of the
collected updates needs at least).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = 1_500_000
TOKENS_PER_IMAGE = 256  # 16 x 16 positions per block at 512 px
BLOCKS = 4
RIEBENCH_EDITS = 296

SOURCES = {  # the fourth H200 session's one run of `bash benchmarks/gpu_ceiling.sh` (call h)
    "unet": "gpu_ceiling_h200_fourth/h_unet.json",
    "collect": "gpu_ceiling_h200_fourth/h_ceiling.json",
    "stream": "gpu_ceiling_h200_fourth/h_ceiling.json",
    "sae": "gpu_ceiling_h200_fourth/h_sae_fused.json",
    "read": "gpu_ceiling_h200_fourth/h_ceiling.json",
    "analysis": "gpu_ceiling_h200_fourth/h_analysis.json",
    "riebench": "paper_profile_h100.json",
}


RUN_FILES = {"unet": "unet.json", "collect": "ceiling.json", "stream": "ceiling.json", "sae": "sae_fused.json",
             "read": "ceiling.json", "analysis": "analysis.json"}  # what gpu_ceiling.sh names them


def use_run(folder: Path) -> None:
    """Take the GPU rows from one gpu_ceiling.sh call's OUT folder (RIEBench's stays in SOURCES)."""
    for name, file in RUN_FILES.items():
        SOURCES[name] = str(Path(folder).resolve() / file)


def _load(name: str) -> dict:
    return json.loads((RESULTS / SOURCES[name]).read_text())  # an absolute path replaces RESULTS


def rates() -> dict:
    """The measured rates the projection uses, each with the file it comes from."""
    unet, col, stream = _load("unet"), _load("collect")["collect"], _load("stream")["stream"]
    sae = {r["n_features"]: r["tokens_per_s"] for r in _load("sae")["results"]}
    suite = _load("read")["read"]["suite"]
    analysis = _load("analysis")
    rie = _load("riebench")["chapters"]["06_riebench"]
    store_bytes_per_image = col["after"]["bytes"] / (col["after"]["seconds"] * col["after"]["images_per_s"])
    return {
        "bare_unet_images_per_s": unet["best"]["images_per_s"],
        "collect_images_per_s_steady": col["after_marginal"]["images_per_s"],
        "collect_images_per_s_1024": col["after"]["images_per_s"],
        "stream_train_images_per_s_steady": stream["stream_training_after_marginal"]["images_per_s"],
        "sae_tokens_per_s_5120": sae[5120],
        "disk_read_GBps": suite["disk_read_cold_cache_8_threads"]["GBps"],
        "store_read_tokens_per_s_per_block": suite["reader_verified_default_groups_gpu_batches_cold_cache"]["tokens_per_s_per_block"],
        "analysis_tokens_per_s_cold": analysis["one_read_cold"]["tokens_per_s"],
        "analysis_tokens_per_s_warm": analysis["one_read_warm"]["tokens_per_s"],
        "store_bytes_per_image": store_bytes_per_image,
        # every edit generated: the dev edits that chose the grid cell and the test edits reported
        "riebench_s_per_edit": rie["resources"]["image_seconds"] / (rie["context"]["n_edits"]
                                                                   + rie["context"].get("n_dev_edits", 0)),
    }


def project(r: dict) -> dict:
    """Hours per stage at paper scale, the store path's total and the one-H200 floor."""
    tokens_per_block = PROMPTS * TOKENS_PER_IMAGE
    store_bytes = PROMPTS * r["store_bytes_per_image"]
    h = {
        "collection": PROMPTS / r["collect_images_per_s_steady"] / 3600,
        # four SAEs from one read of the store: the slower of the read and the four SAEs' steps
        "training_steps": BLOCKS * tokens_per_block / r["sae_tokens_per_s_5120"] / 3600,
        "training_read": tokens_per_block / r["store_read_tokens_per_s_per_block"] / 3600,
        "analysis": BLOCKS * tokens_per_block / r["analysis_tokens_per_s_cold"] / 3600,
        "riebench": RIEBENCH_EDITS * r["riebench_s_per_edit"] / 3600,
        "unet_pass": PROMPTS / r["bare_unet_images_per_s"] / 3600,
        "store_disk_pass": store_bytes / (r["disk_read_GBps"] * 1e9) / 3600,
        "one_pass_stream_training": PROMPTS / r["stream_train_images_per_s_steady"] / 3600,
    }
    h["training"] = max(h["training_steps"], h["training_read"])
    h["total_store_path"] = h["collection"] + h["training"] + h["analysis"] + h["riebench"]
    h["floor"] = h["unet_pass"] + h["store_disk_pass"]
    h["floor_with_riebench"] = h["floor"] + h["riebench"]
    return {"hours": h, "store_TB": store_bytes / 1e12}


def markdown(r: dict, p: dict) -> str:
    h = p["hours"]
    rows = [
        ("collection to a store", f"{r['collect_images_per_s_steady']:.1f} images/s (steady state; 1,024 prompts end to end: "
         f"{r['collect_images_per_s_1024']:.1f})", h["collection"]),
        ("SAE training, four 1280 x 5120 SAEs from one read of the store",
         f"step {r['sae_tokens_per_s_5120'] / 1e6:.2f}M tokens/s per SAE ({h['training_steps']:.2f} h of GPU); the store "
         f"read verified from disk {r['store_read_tokens_per_s_per_block'] / 1e3:.0f}k tokens/s per block", h["training"]),
        ("feature analysis (05) over the whole store, all blocks in one read",
         f"{r['analysis_tokens_per_s_cold'] / 1e3:.0f}k tokens/s, page cache dropped "
         f"({r['analysis_tokens_per_s_warm'] / 1e3:.0f}k warm)", h["analysis"]),
        ("RIEBench (06), same grid", f"{r['riebench_s_per_edit']:.1f} s per edit (H100 chapter run)", h["riebench"]),
    ]
    lines = ["| stage | rate measured | paper scale |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c:.2f} h |" for a, b, c in rows]
    lines.append(f"| **total, store path** | | **{h['total_store_path']:.2f} h** |")
    lines += [
        "",
        f"Floor on one H200 with this disk: one pass of the bare UNet over 1.5M prompts "
        f"({r['bare_unet_images_per_s']:.1f} images/s: {h['unet_pass']:.2f} h) plus one sequential read of the "
        f"{p['store_TB']:.1f} TB store at the disk's {r['disk_read_GBps']:.2f} GB/s ({h['store_disk_pass']:.2f} h) = "
        f"**{h['floor']:.2f} h**, before any SAE step or RIEBench. Streaming the four SAEs while generating "
        f"(steady state {r['stream_train_images_per_s_steady']:.1f} images/s) would take {h['one_pass_stream_training']:.2f} h "
        "for collection and training together, but leaves no store for the analysis.",
        "",
        f"With RIEBench, which needs its own generation, the floor is **{h['floor_with_riebench']:.2f} h**: any path "
        "that trains and then analyses the trained SAEs over the collected updates passes over them twice (the "
        "UNet's pass to train, then one read of the store to analyse, at the least).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--md", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--run", type=Path, help="a gpu_ceiling.sh OUT folder: its GPU rows replace SOURCES'")
    args = ap.parse_args(argv)
    if args.run:
        use_run(args.run)
    r = rates()
    p = project(r)
    text = markdown(r, p)
    print(text)
    if args.md:
        args.md.write_text(text)
    if args.json:
        from repro.io import provenance, write_json_atomic

        write_json_atomic(args.json, {"rates": r, **p, "sources": SOURCES, "provenance": provenance()})


if __name__ == "__main__":
    main()
