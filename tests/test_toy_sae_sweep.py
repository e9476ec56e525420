"""benchmarks/toy_sae_sweep.py: the sweep runs on the toy at tiny size, and its numbers mean what they say."""

import json

import pytest
import torch
from benchmark_script import load


def test_cosine_by_firing_splits_never_fired_then_quartiles_rarest_first():
    sweep = load("toy_sae_sweep")
    count = torch.tensor([0, 0, 5, 1, 9, 3, 7, 2, 8, 4])  # 2 never fired, 8 fired: quartiles of 2
    cos = torch.arange(10, dtype=torch.float32) / 10
    groups = sweep.cosine_by_firing(cos, cos / 2, count, n_tokens=100)
    assert [g["group"] for g in groups] == ["never fired", "Q1 of fired", "Q2 of fired", "Q3 of fired", "Q4 of fired"]
    assert [g["n"] for g in groups] == [2, 2, 2, 2, 2]
    # Q1 holds counts 1 and 2 (latents 3 and 7): cosines 0.3 and 0.7, frequencies 0.01 .. 0.02
    assert groups[1]["freq_min"] == pytest.approx(0.01) and groups[1]["freq_max"] == pytest.approx(0.02)
    assert groups[1]["median_cos"] == pytest.approx(0.3)  # torch's median: the lower of two
    assert groups[0]["median_cos"] == pytest.approx(0.0) and groups[0]["median_cos_half"] == pytest.approx(0.0)
    assert groups[4]["freq_min"] == pytest.approx(0.08)  # counts 8 and 9
    fired = count[2:]  # no ties
    assert sweep.spearman(fired, fired.double() ** 2) == pytest.approx(1.0)
    assert sweep.spearman(fired, -fired) == pytest.approx(-1.0)


def test_cosine_by_subspace_splits_the_cosine_inside_and_outside_the_datas_span():
    """Data in the first 2 of 4 coordinates; the decoder keeps its start outside that span and
    replaces it inside by a fixed direction: the inside part and the outside part add up to the
    cosine, and each is what the construction puts there."""
    from repro.sae.config import SAEConfig
    from repro.sae.model import TopKSAE

    sweep = load("toy_sae_sweep")
    sae = TopKSAE(SAEConfig(d_model=4, n_features=6, k=2, k_aux=0), seed=5)
    sae.metadata = {"init_seed": 5}
    start = sae.W_dec.detach().clone()  # [4, 6]
    now = start.clone()
    now[:2] = torch.tensor([[1.0], [0.0]])  # inside the span: every column now points along e0
    sae.W_dec.data.copy_(now)
    data = torch.zeros(500, 4)
    data[:, :2] = torch.randn(500, 2) * torch.tensor([3.0, 1.0])
    got = sweep.cosine_by_subspace(sae, data, share=0.999)
    assert got["rank"] == 2 and got["d"] == 4
    norms = now.norm(dim=0) * start.norm(dim=0)
    cos_in = now[0] * start[0] / norms  # e1 of `now` is 0
    cos_out = (now[2:] * start[2:]).sum(0) / norms
    assert got["median_cos_inside"] == pytest.approx(float(cos_in.median()), abs=1e-5)
    assert got["median_cos_outside"] == pytest.approx(float(cos_out.median()), abs=1e-5)
    cos = torch.nn.functional.cosine_similarity(now, start, dim=0)
    torch.testing.assert_close(cos_in + cos_out, cos)


def test_sweep_trains_every_config_on_toy_updates_and_writes_json(tmp_path, one_thread):
    out = tmp_path / "sweep.json"
    result = load("toy_sae_sweep").main(["--device", "cpu", "--prompts", "32", "--heldout", "8", "--steps", "40",
                           "--expansions", "1", "2", "--ks", "4", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["settings"]["steps"] == 40 and saved["git_commit"] and saved["device"]
    assert [(r["expansion"], r["k"], r["n_features"]) for r in saved["rows"]] == [(1, 4, 128), (2, 4, 256)]
    for row in result["rows"]:
        assert row["block"] == "up.0.1" and row["half_step"] == 20
        # trained beats its own init on held-out updates, and the half-way EV precedes the final one
        assert row["heldout_ev"] > row["heldout_ev_at_init"] + 0.1
        assert row["ev_gain_last_doubling"] == pytest.approx(row["train_ev"] - row["train_ev_half"])
        groups = row["cos_by_firing"]
        assert sum(g["n"] for g in groups) == row["n_features"]
        cosines = [g[key] for g in groups for key in ("median_cos", "median_cos_half") if g[key] is not None]
        assert all(-1 <= c <= 1 for c in cosines)
        # 40 steps move the columns, but not far: below 1, and further at the end than half-way
        assert 0.3 < row["median_cos_to_init"] < row["median_cos_to_init_half"] < 1
        assert not row["converged"]  # 40 steps are not convergence by 03's criterion
        assert row["stats_tokens"] == 50 * 1024
        sub = row["cos_by_subspace"]
        assert 1 <= sub["rank"] <= sub["d"] == 128 and -1 <= sub["median_cos_inside"] <= 1
    # what chapter 03 reads from such a file: the first row, as recorded
    from repro.sae.stability import cosine_plateau

    first = saved["rows"][0]
    plateau = cosine_plateau(out)
    assert (plateau["steps"], plateau["half_step"], plateau["block"]) == (40, 20, "up.0.1")
    assert plateau["cos"] == first["median_cos_to_init"] and plateau["cos_half"] == first["median_cos_to_init_half"]
    assert plateau["cos_inside"] == first["cos_by_subspace"]["median_cos_inside"]
    assert plateau["ev_gain"] == first["ev_gain_last_doubling"]


def test_cosine_plateau_names_what_a_file_lacks(tmp_path):
    from repro.errors import ReproError
    from repro.paths import project_root
    from repro.sae.stability import cosine_plateau

    bad = tmp_path / "old.json"
    bad.write_text(json.dumps({"rows": [{"block": "up.0.1", "steps": 10}]}))
    before = bad.read_bytes()
    with pytest.raises(ReproError, match="not a toy_sae_sweep result"):
        cosine_plateau(bad)
    with pytest.raises(ReproError, match="not a toy_sae_sweep result"):
        cosine_plateau(tmp_path / "missing.json")
    assert bad.read_bytes() == before
    # the recorded run chapter 03 cites is in the repository and reads
    recorded = cosine_plateau(project_root() / "benchmarks/results/toy_sae_sweep_cpu_32k.json")
    assert recorded["steps"] == 32000 and recorded["half_step"] == 16000
