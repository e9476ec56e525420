"""Before/after table of the book's headline numbers from two `results/` folders (e.g. the toy
book on the old and on the new ShapesWorld models).

    python benchmarks/book_compare.py BEFORE_RESULTS AFTER_RESULTS > table.md

Rows: prompt following (01), training EV (03), held-out EV, random-SAE EV and transfer EV per
setting averaged over steps, with its worst step (04), purity share, causality at each strength
(switch on, preserved, against the random direction) and switch-off (05), RIEBench best
success-and-preserved per method and success per category x block (06). A cell is "-" where a
folder lacks the number (chapters changed between the two runs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def load(folder: Path) -> dict:
    return {p.stem: json.loads(p.read_text())["numbers"] for p in sorted(folder.glob("*.json"))}


def get(d: dict, *path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, dict) and "rate" in v:
        return f"{v['rate']:.{digits}f} ({v['hits']}/{v['n']})"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def rows(r: dict) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, pf in (get(r, "01_shapesworld", "prompt_following") or {}).items():
        out[f"01 prompt following, {name}: all right (n)"] = f"{pf['scores']['all']:.3f} ({pf['n']})"
    for b, v in (get(r, "03_train", "per_block") or {}).items():
        out[f"03 training EV, {b}"] = v.get("ev")
    for b, v in (get(r, "04_evaluate", "reconstruction") or {}).items():
        out[f"04 held-out EV, {b}"] = v.get("ev")
    for b, v in (get(r, "04_evaluate", "random_sae_reconstruction") or {}).items():
        out[f"04 random SAE EV (control), {b}"] = v.get("ev")
    for key, per_step in (get(r, "04_evaluate", "transfer_ev_per_step") or {}).items():
        out[f"04 transfer EV, {key}: mean over steps [worst step]"] = f"{np.mean(per_step):.3f} [{np.min(per_step):.3f}]"
    for key, per_step in (get(r, "04_evaluate", "control_ev_per_step") or {}).items():
        out[f"04 control (ceiling) EV, {key}: mean over steps"] = float(np.mean(per_step))
    out["04 transfer / ceiling, mean over cells"] = get(r, "04_evaluate", "summary",
                                                         "transfer reaches this share of the control ceiling (mean over cells)")
    for b, v in (get(r, "05_features", "purity_rates") or {}).items():
        for kind in ("trained", "random SAE (control)"):
            out[f"05 pure features (share), {b}, {kind}"] = v.get(kind)
    for b, v in (get(r, "05_features", "causality") or {}).items():
        for kind in ("feature", "random direction"):
            c = v.get(kind, {})
            for s, rate in (c.get("on") or {}).items():
                out[f"05 switch on at s={s}, {b}, {kind}"] = rate
                out[f"05 preserved at s={s}, {b}, {kind}"] = (c.get("preserved") or {}).get(s)
            out[f"05 switch off, {b}, {kind}"] = c.get("off")
    verdict = get(r, "06_riebench", "verdict") or {}
    rie = (verdict.get("success-and-preserved on test, cell chosen on dev (rate, 95% interval, counts)")  # since #27
           or verdict.get("best success-and-preserved per method (rate, 95% interval, counts)") or {})
    for method, v in rie.items():
        out[f"06 best success-and-preserved, {method}"] = v
    for cat, per in (get(r, "06_riebench", "category_block_success") or {}).items():
        for b, v in per.items():
            out[f"06 success, {cat} x {b}"] = v
    return out


def main() -> None:
    before, after = (rows(load(Path(a))) for a in sys.argv[1:3])
    print("| quantity | before | after |\n|---|---|---|")
    for key in list(dict.fromkeys([*before, *after])):
        label = key.replace(" | ", " / ")  # result keys are "block | setting"; "|" would split the cell
        print(f"| {label} | {fmt(before.get(key))} | {fmt(after.get(key))} |")


if __name__ == "__main__":
    main()
