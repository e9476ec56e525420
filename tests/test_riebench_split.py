"""RIEBench dev / test: the split, cells chosen on dev and reported on test, the neuron grid, paired tests."""

import json
import random
from collections import Counter

import pandas as pd
import pytest

from repro.errors import ReproError
from repro.riebench.data import CATEGORIES, RIEEdit
from repro.riebench.methods import PAPER_NEURONS, TOY_NEURONS, Grid
from repro.riebench.neurons import ff_modules, ff_width
from repro.riebench.report import choose_cells, outcomes, paired_comparisons
from repro.riebench.shapes import shapes_riebench
from repro.riebench.split import choose_edits, split_edits


@pytest.fixture(scope="module")
def edits():
    return shapes_riebench()


def _scene_keys(e):
    return {json.dumps(s.to_dict(), sort_keys=True) for s in (e.original_scene, e.edit_scene)}


def test_split_is_disjoint_balanced_and_deterministic(edits):
    split = split_edits(edits)
    dev, test = split["dev"], split["test"]
    assert len(dev) + len(test) == len(edits)
    assert Counter(e.category for e in dev) == Counter(e.category for e in test) == {c: 16 for c in CATEGORIES}
    assert not {e.id for e in dev} & {e.id for e in test}
    dev_scenes = set().union(*map(_scene_keys, dev))
    test_scenes = set().union(*map(_scene_keys, test))
    assert not dev_scenes & test_scenes  # the committed set has scenes drawn for two categories
    prompts = lambda es: {p for e in es for p in (e.original_prompt, e.edit_prompt)}  # noqa: E731
    assert not prompts(dev) & prompts(test)
    shuffled = list(edits)
    random.Random(3).shuffle(shuffled)
    again = split_edits(shuffled)
    assert [e.id for e in again["dev"]] == [e.id for e in dev] and [e.id for e in again["test"]] == [e.id for e in test]


def test_shared_scenes_stay_in_one_split(edits):
    by_scene = {}
    for e in edits:
        by_scene.setdefault(json.dumps(e.original_scene.to_dict(), sort_keys=True), []).append(e.id)
    shared = [ids for ids in by_scene.values() if len(ids) > 1]
    assert shared, "the committed set should hold a scene two categories share (this test would prove nothing)"
    side = {e.id: name for name, es in split_edits(edits).items() for e in es}
    for ids in shared:
        assert len({side[i] for i in ids}) == 1, ids


def test_choose_edits_takes_n_of_each_category_in_each_split(edits):
    dev, test = choose_edits(edits, 4)
    assert Counter(e.category for e in dev) == Counter(e.category for e in test) == {c: 4 for c in CATEGORIES}
    full_dev, _ = choose_edits(edits, 16)
    assert {e.id for e in dev} <= {e.id for e in full_dev}  # a smaller run is a subset of the larger one
    with pytest.raises(ReproError, match="only 16 change_object edits in the dev split"):
        choose_edits(edits, 17)
    twice = [RIEEdit("a", "change_colour", "x", "y"), RIEEdit("a", "change_colour", "z", "w")]
    with pytest.raises(ReproError, match="appears twice"):
        split_edits(twice)


def _row(edit_id, method, k, m, ok, blocks="all"):
    return {"id": edit_id, "category": "change_colour", "method": method, "blocks": blocks, "k": k, "m": m,
            "skipped": None, "success": ok, "preserved": True}


def test_cell_is_chosen_on_dev_and_reported_on_test_only():
    dev, test = [f"d{i}" for i in range(10)], [f"t{i}" for i in range(10)]
    rows = []
    # cell (8, 1): 8/10 on dev, 3/10 on test; cell (32, 2): 5/10 on dev, 9/10 on test
    for i, e in enumerate(dev):
        rows += [_row(e, "transport", 8, 1.0, i < 8), _row(e, "transport", 32, 2.0, i < 5)]
    for i, e in enumerate(test):
        rows += [_row(e, "transport", 8, 1.0, i < 3), _row(e, "transport", 32, 2.0, i < 9)]
    # steering has no k; equal dev rates: the weaker m wins
    rows += [_row(e, "steer", None, m, i % 2 == 0) for m in (0.5, 1.0) for i, e in enumerate(dev + test)]
    rows.append({**_row("d0", None, None, None, False), "skipped": "bad mask"})
    cells = choose_cells(pd.DataFrame(rows), dev, test).set_index("label")
    tr = cells.loc["transport"]
    assert (tr["k"], tr["m"], tr["cells"]) == (8, 1.0, 2)
    assert (tr["dev_hits"], tr["dev_n"], tr["test_hits"], tr["test_n"]) == (8, 10, 3, 10)
    assert tr["test_rate"] == pytest.approx(0.3) and tr["test_lo"] < 0.3 < tr["test_hi"]
    st = cells.loc["steer"]
    assert pd.isna(st["k"]) and st["m"] == 0.5 and st["test_n"] == 10
    with pytest.raises(ReproError, match="both dev and test"):
        choose_cells(pd.DataFrame(rows), dev, test + ["d3"])


def test_paired_comparison_gives_the_exact_mcnemar_p():
    # 20 test edits: both right 5, transport only 1, neurons only 9, neither 5
    pattern = [(True, True)] * 5 + [(True, False)] + [(False, True)] * 9 + [(False, False)] * 5
    rows = []
    for i, (a, b) in enumerate(pattern):
        rows += [_row(f"t{i}", "transport", 8, 1.0, a), _row(f"t{i}", "neurons", 100, 2.0, b),
                 _row(f"t{i}", "per_block", 8, 1.0, a, blocks="mid.0")]
    rows += [_row("d0", "transport", 8, 1.0, True), _row("d0", "neurons", 100, 2.0, True)]
    rows.append(_row("d0", "per_block", 8, 1.0, True, blocks="mid.0"))
    df = pd.DataFrame(rows)
    test = [f"t{i}" for i in range(20)]
    cells = choose_cells(df, ["d0"], test)
    assert set(cells["label"]) == {"transport", "neurons", "per_block (mid.0)"}
    cmp = paired_comparisons(df, cells, test, "transport", ["neurons", "per_block (mid.0)"]).set_index("other")
    row = cmp.loc["neurons"]
    assert (row["n"], row["b"], row["c"]) == (20, 1, 9)
    assert row["p"] == pytest.approx(22 / 1024)  # 2 * P(Binomial(10, 1/2) <= 1)
    assert row["diff"] == pytest.approx(6 / 20 - 14 / 20) and row["lo"] < row["diff"] < row["hi"] < 0
    assert row["other_cell"] == "k=100, m=2"
    same = cmp.loc["per_block (mid.0)"]
    assert (same["diff"], same["p"], same["b"], same["c"]) == (0.0, 1.0, 0, 0)
    with pytest.raises(ReproError, match="no chosen cell for 'steer'"):
        paired_comparisons(df, cells, test, "transport", ["steer"])


def test_unscored_runs_have_no_outcomes():
    with pytest.raises(ReproError, match="no success / preserved column"):
        outcomes(pd.DataFrame([{"id": "a", "method": "transport", "skipped": None}]))


def test_toy_neuron_grid_reaches_the_papers_share():
    from repro.blocks import resolve_blocks
    from repro.models.loading import load_pipeline

    unet = load_pipeline("shapes-turbo", device="cpu").unet
    n = sum(ff_width(mod) for mod in ff_modules(unet, resolve_blocks(unet, None)).values())
    assert n == TOY_NEURONS
    toy, paper = Grid.toy(n), Grid()
    assert max(toy.k_neurons) / n == pytest.approx(max(paper.k_neurons) / PAPER_NEURONS, rel=0.01)  # 39 %
    assert [k / n for k in toy.k_neurons] == pytest.approx([k / PAPER_NEURONS for k in paper.k_neurons], rel=0.01)
    assert toy.m_neurons == (1.0, 2.0) and paper.k_neurons == (5000, 10000, 20000, 40000, 80000)


def test_report_reads_a_real_run(tiny_pipe, one_thread):
    """choose_cells / paired_comparisons on run_benchmark's own rows (steer has no k, per_block one row per block)."""
    import numpy as np

    from repro.riebench.runner import RIEBenchConfig, run_benchmark
    from repro.sae.config import SAEConfig
    from repro.sae.model import TopKSAE

    blocks = ["down.2.1", "mid.0", "up.0.0", "up.0.1"]
    saes = {b: TopKSAE(SAEConfig(d_model=64, n_features=128, k=8, k_aux=8), seed=i) for i, b in enumerate(blocks)}
    m = np.zeros((64, 64), bool)
    m[8:40, 16:48] = True
    edits = [RIEEdit(f"e{i}", "change_colour", f"a red circle {i}", f"a blue circle {i}", source_mask=m,
                     target_mask=m, seed=i) for i in range(2)]
    dev, test = split_edits(edits)["dev"], split_edits(edits)["test"]
    assert len(dev) == len(test) == 1

    def scorer(edit, images, source, target):  # preserved: a fixed function of the picture
        return [{"success": True, "preserved": bool(int(im.astype(np.int64).sum()) % 2)} for im in images]

    grid = Grid(k_transfer=(4, 8), m_transfer=(1.0,), m_steer=(0.5, 1.0), k_neurons=(16,), m_neurons=(1.0,))
    res = run_benchmark(tiny_pipe, saes, dev + test, grid=grid, scorer=scorer, config=RIEBenchConfig(steps=1),
                        progress=False)
    df = res.frame()
    test_ids = [e.id for e in test]
    cells = choose_cells(df, [e.id for e in dev], test_ids).set_index("label")
    assert set(cells.index) == {"source", "target", "transport", "steer", "neurons", *(f"per_block ({b})" for b in blocks)}
    assert cells.loc["transport", "cells"] == 2 and cells.loc["steer", "cells"] == 2
    assert (cells["test_n"] == 1).all() and (cells["dev_n"] == 1).all()
    for label, row in cells.iterrows():  # the test rate is the chosen cell's, recomputed from the rows
        rows = df[df["id"].isin(test_ids) & (df["method"] == row["method"])]
        if row["method"] == "per_block":
            rows = rows[rows["blocks"] == row["blocks"]]
        if row["k"] == row["k"] and row["k"] is not None:
            rows = rows[rows["k"] == row["k"]]
        if row["m"] == row["m"] and row["m"] is not None:
            rows = rows[rows["m"] == row["m"]]
        assert row["test_hits"] == int(rows["preserved"].astype(bool).sum()), label
    cmp = paired_comparisons(df, cells.reset_index(), test_ids)
    assert set(cmp["other"]) == set(cells.index) - {"transport", "source", "target"} and (cmp["n"] == 1).all()


def test_the_riebench_claim_reads_the_paired_table():
    """Non-inferiority against neurons at a 0.10 margin; the random-SAE comparison is its positive control."""
    import pandas as pd

    from repro.claims import verdict
    from repro.riebench.report import claims

    def row(other, diff, lo, hi, p):
        return dict(reference="transport", other=other, n=32, reference_rate=0.5, other_rate=0.5 - diff, diff=diff,
                    lo=lo, hi=hi, p=p, b=0, c=0)

    good = pd.DataFrame([row("neurons", 0.0, -0.08, 0.08, 1.0), row("transport, random SAE (control)", 0.3, 0.1, 0.5, 0.001)])
    assert verdict(claims(good)[0])[0] == "reproduces"
    worse = pd.DataFrame([row("neurons", -0.2, -0.35, -0.05, 0.01), row("transport, random SAE (control)", 0.3, 0.1, 0.5, 0.001)])
    assert verdict(claims(worse)[0])[0] == "does not reproduce"
    blind = pd.DataFrame([row("neurons", -0.2, -0.35, -0.05, 0.01), row("transport, random SAE (control)", 0.1, -0.1, 0.3, 0.5)])
    assert verdict(claims(blind)[0])[0] == "undecidable"
    assert claims(pd.DataFrame([row("steer", 0.0, -0.1, 0.1, 1.0)])) == []
