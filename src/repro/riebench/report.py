"""RIEBench's headline numbers: each method's grid cell chosen on dev edits, reported on test edits.

    dev, test = choose_edits(shapes_riebench(), 16)            # repro.riebench.split
    df = run_benchmark(pipe, saes, dev + test, ...).frame()
    cells = choose_cells(df, [e.id for e in dev], [e.id for e in test])
    paired_comparisons(df, cells, [e.id for e in test], "transport", ["neurons", "steer"])

The per-edit outcome is `success and preserved` (ShapesScorer's two booleans). Picking the
best cell on the edits one reports inflates the rate of a method with a larger grid; here
the cell is the best on dev, and only its test edits are counted. Paired comparisons run
two methods' chosen cells on the same test edits: the exact McNemar p value and the
difference of rates with Newcombe's interval (`repro.intervals.paired_difference`).
"""

from __future__ import annotations

import math
from typing import Sequence


from repro.errors import ReproError
from repro.intervals import paired_difference, rate

CELL = ["method", "blocks", "k", "m"]


def _label(method: str, blocks) -> str:
    """"transport", or "per_block (mid.0)" for a run restricted to one block."""
    return method if blocks in (None, "all") or blocks != blocks else f"{method} ({blocks})"


def outcomes(df):
    """One row per edit x method x grid cell: label, method, blocks, k, m, id, ok (bool).

    ok = success and preserved; skipped edits have no row. Raises ReproError when the run
    was not scored (no success / preserved columns: edits outside ShapesWorld)."""
    missing = [c for c in ("success", "preserved") if c not in df]
    if missing:
        raise ReproError(f"the RIEBench rows have no {' / '.join(missing)} column: only scored runs (ShapesWorld "
                         "edits with the oracle, ShapesScorer) have per-edit outcomes")
    done = df[df["skipped"].isna() & df["method"].notna()]
    out = done[CELL + ["id"]].copy()
    out["ok"] = done["success"].astype(bool) & done["preserved"].astype(bool)
    out["label"] = [_label(m, b) for m, b in zip(out["method"], out["blocks"])]
    return out.reset_index(drop=True)


def _cell_key(k, m) -> tuple:
    """Sort key of a cell: fewest units, then weakest strength (None: a method without k / m)."""
    return (-1 if k is None or k != k else k, -1 if m is None or m != m else m)


def choose_cells(df, dev_ids: Sequence[str], test_ids: Sequence[str]):
    """Per method (per block for per_block), the grid cell best on dev; its numbers on test.

    Returns a DataFrame, one row per label: label, method, blocks, k, m (the chosen cell),
    cells (how many were tried), dev_rate, dev_hits, dev_n, test_rate, test_lo, test_hi
    (95% Wilson), test_hits, test_n. Ties on dev go to the cell with the smaller k, then the
    smaller m. Raises ReproError when dev and test share an edit."""
    import pandas as pd

    dev_ids, test_ids = set(dev_ids), set(test_ids)
    if dev_ids & test_ids:
        raise ReproError(f"{len(dev_ids & test_ids)} edits are in both dev and test (e.g. "
                         f"{sorted(dev_ids & test_ids)[0]!r}): split them with repro.riebench.split.split_edits")
    per_edit = outcomes(df)
    rows = []
    for label, of_label in per_edit.groupby("label", sort=False):
        cells = []
        for (k, m), cell in of_label.groupby(["k", "m"], dropna=False, sort=False):
            dev = cell[cell["id"].isin(dev_ids)]
            cells.append((dev["ok"].mean() if len(dev) else -1.0, k, m, cell))
        # best dev rate first; among equals the smallest cell
        cells.sort(key=lambda c: (-c[0], _cell_key(c[1], c[2])))
        dev_rate, k, m, cell = cells[0]
        dev = cell[cell["id"].isin(dev_ids)]
        test = cell[cell["id"].isin(test_ids)]
        r = rate(int(test["ok"].sum()), len(test))
        first = of_label.iloc[0]
        rows.append({"label": label, "method": first["method"], "blocks": first["blocks"],
                     "k": None if k is None or k != k else int(k), "m": None if m is None or m != m else float(m),
                     "cells": len(cells), "dev_rate": float(dev["ok"].mean()) if len(dev) else math.nan,
                     "dev_hits": int(dev["ok"].sum()), "dev_n": len(dev), "test_rate": r["rate"], "test_lo": r["lo"],
                     "test_hi": r["hi"], "test_hits": r["hits"], "test_n": r["n"]})
    return pd.DataFrame(rows)


def _test_outcomes(per_edit, chosen_row, test_ids) -> "pd.Series":
    """bool per test edit id of one chosen cell."""
    sel = (per_edit["label"] == chosen_row["label"]) & per_edit["id"].isin(set(test_ids))
    for col in ("k", "m"):
        v = chosen_row[col]
        sel &= per_edit[col].isna() if v is None or v != v else per_edit[col] == v
    return per_edit[sel].set_index("id")["ok"]


def cell_name(row) -> str:
    """"k=32, m=2" (or "m=1" for steering, "-" for a method without a grid)."""
    parts = [f"{c}={row[c]:g}" for c in ("k", "m") if row[c] is not None and row[c] == row[c]]
    return ", ".join(parts) or "-"


def paired_comparisons(df, chosen, test_ids: Sequence[str], reference: str = "transport",
                       against: Sequence[str] | None = None):
    """`reference`'s chosen cell against each label in `against`'s, on the test edits both ran.

    chosen: `choose_cells`' table. against: labels (default every other label except the
    unedited "source" / "target" images). Returns a DataFrame, one row per comparison:
    reference, other, reference_cell, other_cell, n (paired edits), reference_rate,
    other_rate, diff (reference - other), lo, hi (95% Newcombe), p (exact McNemar),
    b (edits only the reference got right), c (only the other). Raises ReproError for a
    label `chosen` does not hold."""
    import pandas as pd

    by_label = {r["label"]: r for r in chosen.to_dict("records")}
    if against is None:
        against = [lab for lab in by_label if lab not in (reference, "source", "target")]
    unknown = [lab for lab in [reference, *against] if lab not in by_label]
    if unknown:
        raise ReproError(f"no chosen cell for {unknown[0]!r}: the run has {sorted(by_label)}")
    per_edit = outcomes(df)
    ref = _test_outcomes(per_edit, by_label[reference], test_ids)
    rows = []
    for label in against:
        other = _test_outcomes(per_edit, by_label[label], test_ids)
        ids = sorted(set(ref.index) & set(other.index))
        x, y = ref.loc[ids].to_numpy(bool), other.loc[ids].to_numpy(bool)
        d = paired_difference(x, y)
        rows.append({"reference": reference, "other": label, "reference_cell": cell_name(by_label[reference]),
                     "other_cell": cell_name(by_label[label]), "n": d["n"],
                     "reference_rate": float(x.mean()) if len(x) else math.nan,
                     "other_rate": float(y.mean()) if len(y) else math.nan,
                     "diff": d["diff"], "lo": d["lo"], "hi": d["hi"], "p": d["p"], "b": d["b"], "c": d["c"]})
    return pd.DataFrame(rows)


def claims(paired, margin: float = 0.10) -> list:
    """06's measurement of the paper's RIEBench claim (`repro.claims`): SAE feature transport edits as
    well as neurons (paired difference on the test edits, 95% lower bound above -`margin`: no worse by
    more than the margin). The positive control is the same paired test separating the trained SAE's
    transport from the random SAE's (McNemar p < 0.05): without it, the test cannot tell features from
    random directions at this n."""
    from repro.claims import Claim

    by = {r["other"]: r for r in paired.to_dict("records")} if len(paired) else {}
    if "neurons" not in by:
        return []
    r, ctrl = by["neurons"], by.get("transport, random SAE (control)")
    fmt_d = lambda x: f"{x['diff']:+.2f} [{x['lo']:+.2f}, {x['hi']:+.2f}], p {x['p']:.2g}"  # noqa: E731
    return [Claim(
        claim="SAE feature transport edits as well as neurons", chapter="06_riebench",
        measure=f"success-and-preserved, transport minus neurons on the same test edits (cells chosen on dev), "
                f"95% lower bound above -{margin:.2f}",
        result=f"{r['reference_rate']:.2f} vs {r['other_rate']:.2f}: {fmt_d(r)}",
        control="neurons (GEGLU outputs) at their dev-chosen cell", beats_control=bool(r["lo"] > -margin),
        positive_control=("trained vs random SAE transport: " + fmt_d(ctrl)) if ctrl else "not run",
        power=(1.0 if ctrl["p"] < 0.05 and ctrl["diff"] > 0 else 0.0) if ctrl else 0.0,
        n=f"{r['n']} test edits")]
