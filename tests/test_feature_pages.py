"""Feature pages: the activation-distribution pass against brute force, decoder neighbours,
the per-feature record, labels (ground truth, none with a reason, a user labeller), causal and RIEBench
summaries, and the static files written and read back."""

import numpy as np
import pytest
from benchmark_script import load
import torch

from repro.errors import ReproError
from repro.features.analysis import _split
from repro.features.distribution import (HIST_EDGES, ActivationDistribution, DistributionAccumulator, hist_bin,
                                         quantile_samples, step_means)
from repro.features.neighbours import decoder_neighbours
from repro.features.records import NO_LABEL, BlockFeatures, causal_by_feature, feature_record
from repro.features.riebench_counts import RIEBenchCounts, riebench_counts, selection_counts, write_riebench
from repro.features.site import FeatureSite, read_part
from repro.sae.config import SAEConfig
from repro.sae.metrics import fires
from repro.sae.model import TopKSAE

_synthetic = load("_synthetic_features")  # shared with benchmarks/feature_pages.py
synthetic_blocks, synthetic_image = _synthetic.synthetic_blocks, _synthetic.synthetic_image


@pytest.fixture(scope="module")
def sae_x():
    torch.manual_seed(0)
    sae = TopKSAE(SAEConfig(d_model=8, n_features=32, k=3, k_aux=4), seed=2)
    return sae, torch.randn(30, 3, 3, 8)


def _chunks(x, size):
    for s in range(0, len(x), size):
        yield torch.arange(s, min(s + size, len(x))), x[s:s + size]


@torch.no_grad()
def activation_distribution(sae: TopKSAE, chunks, sample: int = 32, seed: int = 0,
                            max_dense_elems: int = 2 ** 25) -> ActivationDistribution:
    """The distribution pass alone over `(image_ids [b], updates [b, H, W, C])` chunks: the plain
    reference for `analyse_features(..., sample_per_feature=)`, which builds it inside its own pass.
    Chunks are cut as that pass cuts them (`_split`), so the reservoir draws the same random keys."""
    n, dev = sae.cfg.n_features, sae.device
    acc = DistributionAccumulator(n, sample, seed, dev)
    for chunk_ids, chunk_x in chunks:
        for ids, x, _ in _split(chunk_ids, chunk_x, None, max_dense_elems // n):
            b, h, w, c = x.shape
            vals, idx = sae.encode_topk(x.reshape(-1, c).to(device=dev, dtype=sae.dtype))  # [b*h*w, k]
            vals = vals.float() * fires(sae.cfg, vals)
            acc.add(ids, vals, idx, torch.zeros(b * h * w, n, device=dev).scatter_(1, idx, vals), (h, w))
    return acc.result()


@pytest.mark.parametrize("chunk, dense", [(30, 2 ** 25), (4, 2 ** 25), (7, 32 * 9)])
def test_distribution_equals_brute_force(sae_x, chunk, dense):
    sae, x = sae_x
    p = activation_distribution(sae, _chunks(x, chunk), sample=5, seed=1, max_dense_elems=dense)
    z = sae.encode(x.reshape(-1, 8)).detach()  # [N*9, n]
    on = z > sae.cfg.fire_threshold
    img_on = on.reshape(30, 9, 32).any(1)  # [N, n]
    assert p.n_images == 30
    assert p.image_count.tolist() == img_on.sum(0).tolist()
    want = torch.zeros(32, len(HIST_EDGES) - 1, dtype=torch.int64)
    for f in range(32):
        want[f].index_add_(0, hist_bin(z[on[:, f], f]), torch.ones(int(on[:, f].sum()), dtype=torch.int64))
    assert torch.equal(p.hist, want) and int(p.hist.sum()) == int(on.sum())
    img_max = z.reshape(30, 9, 32).amax(1)
    for f in range(32):
        got = [int(i) for i in p.sample_ids[f] if i >= 0]
        fired = set(torch.nonzero(img_on[:, f]).flatten().tolist())
        assert len(got) == min(5, len(fired)) and set(got) <= fired and len(set(got)) == len(got)
        for slot, i in enumerate(p.sample_ids[f].tolist()):
            if i < 0:
                continue
            assert abs(float(p.sample_values[f, slot]) - float(img_max[i, f])) < 1e-5
            torch.testing.assert_close(p.sample_maps[f, slot].float(), z.reshape(30, 3, 3, 32)[i, :, :, f],
                                       atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("chunk, dense", [(30, 2 ** 25), (7, 32 * 9)])
def test_distribution_folded_into_the_analysis_pass_equals_the_separate_pass(sae_x, chunk, dense):
    from repro.features.analysis import analyse_features

    sae, x = sae_x
    alone = activation_distribution(sae, _chunks(x, chunk), sample=5, seed=3, max_dense_elems=dense)
    folded = analyse_features(sae, _chunks(x, chunk), m=4, max_dense_elems=dense, sample_per_feature=5, sample_seed=3)
    assert folded.distribution is not None and folded.distribution.n_images == alone.n_images == 30
    for name in ("image_count", "hist", "sample_ids", "sample_values", "sample_maps"):
        assert torch.equal(getattr(folded.distribution, name), getattr(alone, name)), name
    plain = analyse_features(sae, _chunks(x, chunk), m=4, max_dense_elems=dense)
    assert plain.distribution is None and torch.equal(plain.top.image_ids, folded.top.image_ids)
    assert torch.equal(plain.stats.count, folded.stats.count)


def test_reservoir_is_uniform():
    """Every firing image is kept with probability r / (images it fires in), whatever its value."""
    sae = TopKSAE(SAEConfig(d_model=4, n_features=5, k=4, k_aux=2), seed=0)
    x = torch.randn(40, 1, 1, 4)
    hits = torch.zeros(40)
    for seed in range(300):
        p = activation_distribution(sae, _chunks(x, 7), sample=10, seed=seed)
        f = int(p.image_count.argmax())
        hits[p.sample_ids[f][p.sample_ids[f] >= 0]] += 1
    fired = hits > 0
    share = hits[fired] / 300
    expected = 10 / int(fired.sum())
    assert (share - expected).abs().max() < 0.12, share


def test_quantile_samples_come_from_lower_bands(sae_x):
    sae, x = sae_x
    p = activation_distribution(sae, _chunks(x, 10), sample=16, seed=0)
    f = int(p.image_count.argmax())
    bands = quantile_samples(p, f, bands=3, per_band=2)
    assert [b["band"] for b in bands] == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75)]
    values = sorted(float(v) for v, i in zip(p.sample_values[f], p.sample_ids[f]) if i >= 0)
    assert all(v <= values[3 * len(values) // 4 - 1] + 1e-6 for b in bands for v in b["values"])
    means = [np.mean(b["values"]) for b in bands if b["values"]]
    assert means == sorted(means)
    top = bands[2]["ids"]
    assert not set(top) & {i for b in quantile_samples(p, f, exclude=top) for i in b["ids"]}


def test_step_means(sae_x):
    sae, x = sae_x
    updates = torch.stack([x, 2 * x])  # [steps 2, N, H, W, C]
    got = step_means(sae, updates, batch=50)
    want = torch.stack([(sae.encode(u.reshape(-1, 8)) * (sae.encode(u.reshape(-1, 8)) > 1e-3)).mean(0) for u in updates])
    torch.testing.assert_close(got, want.detach(), atol=1e-5, rtol=1e-4)


def test_decoder_neighbours():
    a = TopKSAE(SAEConfig(d_model=8, n_features=16, k=2, k_aux=2), seed=0)
    b = TopKSAE(SAEConfig(d_model=8, n_features=10, k=2, k_aux=2), seed=1)
    with torch.no_grad():
        b.W_dec[:, 3] = a.W_dec[:, 5]
    n = decoder_neighbours({"down.2.1": a, "up.0.1": b}, k=3, chunk=5)
    ids, cos = n["down.2.1"]["down.2.1"]
    assert ids.shape == (16, 3) and (ids != torch.arange(16)[:, None]).all()  # itself left out
    full = a.W_dec.T @ a.W_dec
    full.fill_diagonal_(-2)
    assert torch.equal(ids[:, 0], full.argmax(1))
    assert (cos[:, :-1] >= cos[:, 1:]).all()
    ids, cos = n["down.2.1"]["up.0.1"]
    assert int(ids[5, 0]) == 3 and abs(float(cos[5, 0]) - 1) < 1e-5
    with pytest.raises(ReproError, match="widths differ"):
        decoder_neighbours({"a": a, "b": TopKSAE(SAEConfig(d_model=4, n_features=8, k=2, k_aux=2))})


def test_record_labels_and_hook():
    blocks = synthetic_blocks(("down.2.1", "up.0.1"), n_features=12, m=4, grid=8, n_images=30, sample=8, labels=False)
    bf = blocks["down.2.1"]
    f = int(bf.live()[0])
    rec = feature_record("down.2.1", f, bf)
    assert rec["label"] == "" and rec["label_note"] == NO_LABEL
    assert set(rec["nbr"]) == {"down.2.1", "up.0.1"} and len(rec["nbr"]["up.0.1"]) == 5
    assert len(rec["bands"]) == 3 and rec["hist"]["counts"] and rec["hist"]["counts"][0] > 0
    assert set(rec["steps"]) == {"turbo, 4 steps", "base"} and len(rec["steps"]["base"]["uncond"]) == 20
    assert "riebench" not in rec  # in its own file per block, written after the pages
    seen = []
    rec = feature_record("down.2.1", f, bf, labeller=lambda b, g, r: seen.append((b, g, len(r["top"]["img"]))) or ("dog", 0.7))
    assert rec["label"] == "dog" and rec["label_score"] == 0.7 and rec["label_note"] == "" and seen[0][:2] == ("down.2.1", f)
    gt = synthetic_blocks(("down.2.1",), n_features=12, m=4, grid=8, n_images=30, sample=8)["down.2.1"]
    rec = feature_record("down.2.1", f, gt)
    assert rec["label"] and 0 <= rec["purity"] <= 1 and rec["f1"] is not None
    with pytest.raises(ReproError, match="give one per feature"):
        BlockFeatures(stats=gt.stats, top=gt.top, labels=["a"]).check("down.2.1")


@pytest.mark.parametrize("heat_size", [16, 8])
def test_record_heatmaps_come_back_within_half_a_step(heat_size):
    """A record's top heatmaps, inflated, are the feature's maps (area-averaged to `heat_size`)
    within hmax / 510, hmax being the largest of them."""
    import base64
    import zlib

    bf = synthetic_blocks(("down.2.1",), n_features=12, m=4, grid=16, n_images=30, sample=8)["down.2.1"]
    for f in bf.live()[:4].tolist():
        rec = feature_record("down.2.1", f, bf, heat_size=heat_size)
        keep = [j for j, i in enumerate(bf.top.image_ids[f].tolist()) if i >= 0]
        maps = bf.top.maps[f, keep].float().numpy()  # [m, 16, 16]
        r = 16 // heat_size
        want = maps.reshape(len(keep), heat_size, r, heat_size, r).mean((2, 4))
        assert rec["shape"] == [heat_size, heat_size] and rec["top"]["img"] == bf.top.image_ids[f, keep].tolist()
        q = np.frombuffer(zlib.decompress(base64.b64decode(rec["top"]["heat"])), np.uint8)
        hmax = rec["top"]["hmax"]
        assert hmax == pytest.approx(want.max(), rel=1e-5) and q.max() == 255
        np.testing.assert_allclose(q.reshape(want.shape) * (hmax / 255), want, atol=hmax / 510 * 1.001, rtol=0)


def test_causal_by_feature_and_selection_counts():
    import pandas as pd

    rows = [dict(block="up.0.1", label="colour=red", kind=k, strength=s, joint=j, diff_vs_isotropic=d, p=p, feature=f)
            for k, s, j, d, p, f in (("SAE feature", 1.0, 0.25, 0.0, 1.0, 3), ("SAE feature", 2.0, 0.75, 0.5, 0.01, 3),
                                     ("isotropic random", 1.0, 0.25, float("nan"), float("nan"), None),
                                     ("isotropic random", 2.0, 0.25, float("nan"), float("nan"), None))]
    c = causal_by_feature(pd.DataFrame(rows))["up.0.1"][3]
    assert c == {"label": "colour=red", "s": 2.0, "on": 0.75, "control_on": 0.25, "effect": 0.5, "p": 0.01}
    with pytest.raises(ReproError, match="no 'feature' column"):
        causal_by_feature(pd.DataFrame(rows).drop(columns="feature"))
    counts = selection_counts([("change colour", {"up.0.1": [1, 2]}), ("change colour", {"up.0.1": torch.tensor([2])}),
                               ("change style", {"down.2.1": [0]})], {"up.0.1": 4, "down.2.1": 3})
    assert counts["up.0.1"]["change colour"].tolist() == [0, 1, 2, 0] and counts["down.2.1"]["change style"].tolist() == [1, 0, 0]


def test_selected_units_match_the_transport_weights():
    from repro.riebench.transport import joint_scores, selected_units, selection_weights

    g = torch.Generator().manual_seed(0)
    scores = joint_scores({"a": torch.rand(6, generator=g), "b": torch.rand(4, generator=g)},
                          {"a": torch.rand(6, generator=g), "b": torch.rand(4, generator=g)})
    top, bottom = selected_units(scores, 2)
    add, sub, _ = selection_weights(scores, 2, [1.0])
    for key in ("a", "b"):
        assert top[key].tolist() == torch.nonzero(add[key][0]).flatten().tolist()
        assert bottom[key].tolist() == torch.nonzero(sub[key][0]).flatten().tolist()
    s = scores.scores
    flat = torch.cat([torch.zeros(6, dtype=torch.bool).index_fill_(0, top["a"], True),
                      torch.zeros(4, dtype=torch.bool).index_fill_(0, top["b"], True)])
    assert set(torch.nonzero(flat).flatten().tolist()) == set(s.topk(2).indices.tolist())


class _Results:
    """The part of RIEBenchResults the counts read: its selections."""

    def __init__(self, selections):
        from repro.riebench.runner import RIEBenchResults

        self.selections = selections
        self.selected = RIEBenchResults(selections=selections).selected


def test_riebench_counts_written_beside_the_pages_round_trip(tmp_path):
    sel = [{"id": "e1", "category": "change colour", "method": "transport", "k": 2, "blocks": ["down.2.1", "up.0.1"],
            "top": {"down.2.1": [3], "up.0.1": [5]}, "bottom": {"down.2.1": [], "up.0.1": [1]}},
           {"id": "e1", "category": "change colour", "method": "transport", "k": 4, "blocks": ["down.2.1", "up.0.1"],
            "top": {"down.2.1": [3, 4], "up.0.1": [5, 6]}, "bottom": {"down.2.1": [0], "up.0.1": [1, 2, 7]}},
           {"id": "e2", "category": "change colour", "method": "transport", "k": 4, "blocks": ["down.2.1", "up.0.1"],
            "top": {"down.2.1": [3], "up.0.1": [5]}, "bottom": {"down.2.1": [9], "up.0.1": []}},
           {"id": "e3", "category": "change style", "method": "transport", "k": 4, "blocks": ["down.2.1", "up.0.1"],
            "top": {"down.2.1": [], "up.0.1": [5]}, "bottom": {"down.2.1": [], "up.0.1": []}},
           {"id": "e3", "category": "change style", "method": "per_block", "k": 4, "blocks": ["up.0.1"],
            "top": {"up.0.1": [8]}, "bottom": {"up.0.1": [9]}}]
    results = _Results(sel)
    rc = riebench_counts(results, {"down.2.1": 12, "up.0.1": 12}, sae="saes (k = 10)")
    assert rc.k == 4 and rc.edits == {"change colour": 2, "change style": 1}  # the largest k by default
    assert rc.counts["down.2.1"]["change colour"].tolist() == [1, 0, 0, 2, 1, 0, 0, 0, 0, 1, 0, 0]
    assert rc.counts["down.2.1"]["change style"].sum() == 0  # ran, selected nothing in this block
    assert rc.counts["up.0.1"]["change style"].tolist()[5] == 1
    assert riebench_counts(results, {"down.2.1": 12, "up.0.1": 12}, k=2).counts["up.0.1"]["change colour"].sum() == 2
    assert riebench_counts(results, {"up.0.1": 12}, method="per_block").counts["up.0.1"]["change style"][8] == 1
    with pytest.raises(ReproError, match="use one of"):
        results.selected("transport", k=3)
    with pytest.raises(ReproError, match="only transport and per_block"):
        results.selected("neurons")

    blocks = synthetic_blocks(("down.2.1", "up.0.1", "mid.0"), n_features=12, m=4, grid=8, n_images=30, sample=8)
    folder = tmp_path / "05_features.files"
    FeatureSite(blocks, lambda i: synthetic_image(i, 32), page_size=8).write(folder)
    placeholder = read_part(folder, "up.0.1/riebench")  # the pages come first: RIEBench has not run
    assert placeholder["ran"] is False and "has not run" in placeholder["note"]
    written = write_riebench(folder, rc)
    assert sorted(p.relative_to(folder).as_posix() for p in written) == [
        "down.2.1/riebench.js", "mid.0/riebench.js", "up.0.1/riebench.js"]
    part = read_part(folder, "down.2.1/riebench")
    assert part == {"ran": True, "method": "transport", "k": 4, "sae": "saes (k = 10)",
                    "edits": {"change colour": 2, "change style": 1},
                    "counts": {"change colour": {"0": 1, "3": 2, "4": 1, "9": 1}, "change style": {}}}
    assert not read_part(folder, "mid.0/riebench")["ran"]  # no SAE of mid.0 in the run
    site = FeatureSite(blocks, lambda i: synthetic_image(i, 32), page_size=8, riebench=rc)
    assert site.get("down.2.1/riebench") == part  # the kernel serves what the file holds
    wide = RIEBenchCounts(counts={"up.0.1": {"change colour": torch.zeros(13, dtype=torch.int64)}})
    with pytest.raises(ReproError, match="pages' SAEs"):
        write_riebench(folder, wide)
    with pytest.raises(ReproError, match="run 05_features first"):
        write_riebench(tmp_path / "nowhere", rc)


def test_site_files_round_trip(tmp_path):
    blocks = synthetic_blocks(("down.2.1", "up.0.1"), n_features=70, m=4, grid=8, n_images=40, sample=8)
    f0 = int(blocks["down.2.1"].live()[0])
    blocks["down.2.1"].icons = {f0: {s: synthetic_image(500 + i, 96) for i, s in enumerate((0.5, 1.0, 1.5))}}
    blocks["down.2.1"].painted = {f0: {"prompt": "a cat", "region": "centre", "plain": synthetic_image(1, 96),
                                       "edited": synthetic_image(2, 96)}}
    site = FeatureSite(blocks, lambda i: synthetic_image(i, 96), page_size=32, thumb=48)
    sizes = site.write(tmp_path / "fp")
    assert sizes["files"] > 0 and sizes["json"] > 0
    man = read_part(tmp_path / "fp", "manifest")
    assert man["blocks"]["down.2.1"]["pages"] == 3 and man["blocks"]["down.2.1"]["n_features"] == 70
    index = read_part(tmp_path / "fp", "down.2.1/index")
    live = blocks["down.2.1"].live().tolist()
    assert index["ids"] == live and len(index["label"]) == len(index["dens"]) == len(live)
    assert sum(x is not None for x in index["causal"]) == 8
    for k in range(3):
        page = read_part(tmp_path / "fp", f"down.2.1/p{k}")
        assert sorted(map(int, page["features"])) == [f for f in live if k * 32 <= f < (k + 1) * 32]
        assert page == site.get(f"down.2.1/p{k}")
    rec = site.get(f"down.2.1/p{f0 // 32}")["features"][str(f0)]
    assert [i["s"] for i in rec["icons"]] == [0.5, 1.0, 1.5]
    for path in [i["src"] for i in rec["icons"]] + [rec["painted"]["plain"], rec["painted"]["edited"]]:
        assert (tmp_path / "fp" / path).read_bytes() == site.get(path)
    for i in rec["top"]["img"] + [i for b in rec["bands"] for i in b["img"]]:
        assert (tmp_path / "fp" / "img" / f"{i}.webp").is_file()
    with pytest.raises(ReproError, match="no block"):
        site.get("mid.0/index")
