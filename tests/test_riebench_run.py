"""RIEBench end to end on the tiny pipeline: runner, skipped edits, scorers, segmenter, CLI."""

import json

import numpy as np
import pytest
import torch

from repro.riebench.data import RIEEdit
from repro.riebench.methods import Grid
from repro.riebench.runner import (
    RIEBenchConfig, category_block_table, load_block_saes, run_benchmark, success_vs_preservation,
)
from repro.riebench.score import ClipScorer, ShapesScorer, edit_success, pixel_outside, preserved
from repro.riebench.segment import ClipSegSegmenter, segment_edit
from repro.riebench.shapes import shapes_riebench
from repro.sae.config import SAEConfig
from repro.sae.io import save_sae
from repro.sae.model import TopKSAE
from repro.shapes.render import render

BLOCKS = ["down.2.1", "mid.0", "up.0.0", "up.0.1"]
GRID = Grid(k_transfer=(4,), m_transfer=(1.0,), m_steer=(1.0,), k_neurons=(16,), m_neurons=(1.0,))


def _saes():
    return {b: TopKSAE(SAEConfig(d_model=64, n_features=128, k=8, k_aux=8), seed=i) for i, b in enumerate(BLOCKS)}


def _mask():
    m = np.zeros((64, 64), bool)
    m[8:40, 16:48] = True
    return m


def test_run_benchmark_skips_bad_edits_and_continues(tiny_pipe, tmp_path):
    m = _mask()
    edits = [
        RIEEdit("unknown", "change_weather", "a red circle", "a blue circle", source_mask=m, target_mask=m),
        RIEEdit("good", "change_colour", "a red circle", "a blue circle", source_mask=m, target_mask=m, seed=1),
        RIEEdit("same", "change_colour", "a red circle", "a red circle", source_mask=m, target_mask=m),
        RIEEdit("small", "change_colour", "a red circle", "a blue circle", source_mask=m[:32, :32], target_mask=m),
        RIEEdit("style", "change_style", "a red circle", "a red circle, outline style"),  # whole-image masks
    ]
    def scorer(edit, images, source, target):
        return [{"batch": len(images)} for _ in images]

    res = run_benchmark(tiny_pipe, _saes(), edits, grid=GRID, scorer=scorer, config=RIEBenchConfig(batch_size=8),
                        progress=False)
    skipped = {s["id"]: s["reason"] for s in res.skipped}
    assert set(skipped) == {"unknown", "same", "small"}
    assert "unknown category" in skipped["unknown"] and "identical" in skipped["same"]
    assert "32x32 px" in skipped["small"]
    df = res.frame()
    good = df[df["id"] == "good"]
    assert sorted(good["method"].unique()) == ["neurons", "per_block", "source", "steer", "target", "transport"]
    assert len(good) == 2 + 1 + 4 + 1 + 1
    per_block = good[good["method"] == "per_block"]
    for row in per_block.to_dict("records"):
        assert row["n_top"] == {row["blocks"]: 4} and row["n_selected"] == {row["blocks"]: 8}
    # which features each edit moved: one joint selection per edit and k, one per block for per_block
    joint = [s for s in res.selections if s["method"] == "transport"]
    assert [s["id"] for s in joint] == ["good", "style"] and joint[0]["k"] == 4
    assert sum(len(ids) for ids in joint[0]["top"].values()) == 4
    assert sum(len(ids) for ids in joint[0]["bottom"].values()) == 4
    assert len([s for s in res.selections if s["method"] == "per_block" and s["id"] == "good"]) == 4
    assert {b: len(ids) for b, ids in res.selected("transport")[0][1].items()} == good[good["method"] == "transport"].iloc[0]["n_selected"]
    from repro.features.riebench_counts import riebench_counts

    rc = riebench_counts(res, {b: 128 for b in BLOCKS})
    assert rc.k == 4 and rc.edits == {"change_colour": 1, "change_style": 1}
    assert sum(int(c.sum()) for by_cat in rc.counts.values() for c in by_cat.values()) == 2 * 8
    row = good[good["method"] == "transport"].iloc[0]
    assert sum(row["n_top"].values()) == 4 and set(row["n_top"]) == set(BLOCKS)
    assert good[good["method"] == "target"]["pixel_outside"].iloc[0] == 0.0
    assert np.isnan(df[(df["id"] == "style") & (df["method"] == "transport")]["pixel_outside"].iloc[0])
    summary = success_vs_preservation(df)
    assert {"method", "k", "m", "pixel_outside", "n_edits"} <= set(summary.columns)
    counts = category_block_table(df, "n_selected")
    assert set(counts.columns) == set(BLOCKS) and set(counts.index) == {"change_colour", "change_style"}
    assert category_block_table(df, "pixel_outside").shape == (1, 4)  # style: nothing lies outside (NaN)
    edited = good[~good["method"].isin(["source", "target"])]
    assert len(edited) == 7 and (edited["batch"] == 7).all()  # every method's settings of the edit share one batch
    out = res.save_jsonl(tmp_path / "r.jsonl")
    lines = out.read_text().splitlines()
    assert "settings" in json.loads(lines[0]) and len(lines) == 1 + len(res.rows)


def _reading(scene):
    from repro.shapes.world import POSITIONS

    slots = {p: None for p in POSITIONS}
    for o in scene.objects:
        slots[o.position] = {k: v for k, v in o.to_dict().items() if k != "position"}
    return {"background": scene.background, "style": scene.style, "slots": slots}


class FakeOracle:
    """Reads a rendered image back by looking it up among known renders."""

    def __init__(self, scenes):
        self.table = {render(s).image.tobytes(): _reading(s) for s in scenes}

    def read(self, images):
        return [self.table[np.asarray(img).tobytes()] for img in images]


def test_shapes_scorer_success_and_preservation_per_category():
    edits = shapes_riebench()
    firsts = {}
    for e in edits:
        firsts.setdefault(e.category, e)
    for e in firsts.values():
        want, orig = _reading(e.edit_scene), _reading(e.original_scene)
        assert edit_success(e, want) and preserved(e, want, orig), e.id
        assert not edit_success(e, orig), e.id
        scorer = ShapesScorer(FakeOracle([e.edit_scene, e.original_scene]))
        src, tgt = render(e.edit_scene).image, render(e.original_scene).image
        rows = scorer(e, np.stack([src, tgt]), src, tgt)
        assert rows == [{"success": True, "preserved": True}, {"success": False, "preserved": True}]
    e = firsts["change_colour"]
    broken = _reading(e.edit_scene)
    broken["background"] = next(b for b in ("white", "black") if b != e.original_scene.background)
    assert edit_success(e, broken) and not preserved(e, broken, _reading(e.original_scene))
    img = render(e.original_scene).image
    assert pixel_outside(img[None], img, e.source_mask)[0] == 0.0


def test_real_oracle_reads_clean_edits_if_present():
    from repro.errors import ReproError
    from repro.shapes.oracle import load_oracle

    try:
        oracle = load_oracle()
    except ReproError:
        pytest.skip("no trained oracle in models/oracle")
    firsts = {}
    for e in shapes_riebench():
        firsts.setdefault(e.category, e)
    scorer = ShapesScorer(oracle)
    ok = [scorer(e, render(e.edit_scene).image[None], None, render(e.original_scene).image)[0]["success"]
          for e in firsts.values()]
    assert sum(ok) >= 8, ok


def _tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    from repro.models.tokenizer import write_clip_tokenizer

    folder = write_clip_tokenizer(tmp_path / "tok", ["a", "red", "circle", "blue", "car", "cat"], max_length=16)
    return CLIPTokenizer.from_pretrained(folder)


def test_tiny_clipseg_segmenter_path(tmp_path):
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    torch.manual_seed(0)
    tok = _tokenizer(tmp_path)
    cfg = CLIPSegConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 16, "eos_token_id": tok.eos_token_id,
                     "bos_token_id": tok.bos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        projection_dim=32, reduce_dim=16, extract_layers=[0, 1], decoder_num_attention_heads=2,
        decoder_intermediate_size=32)
    model = CLIPSegForImageSegmentation(cfg)
    model.save_pretrained(tmp_path / "clipseg")
    tok.save_pretrained(tmp_path / "clipseg")
    seg = ClipSegSegmenter.from_pretrained(tmp_path / "clipseg", threshold=0.5)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    probs = seg.probabilities(image, ["a red circle", "car"])
    assert probs.shape == (2, 64, 64) and ((probs >= 0) & (probs <= 1)).all()
    mask = seg(image, ["a red circle"])
    assert mask.shape == (64, 64) and mask.dtype == bool
    e = RIEEdit("x", "change_background", "a red circle", "a red circle on a car",
                source_mask_prompts=("circle",), target_mask_prompts=("circle",))
    done = segment_edit(e, seg, image, image)
    assert np.array_equal(done.source_mask, ~seg(image, ["circle"]))


def test_tiny_clip_scorer_path(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    tok = _tokenizer(tmp_path)
    cfg = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 16, "eos_token_id": tok.eos_token_id,
                     "bos_token_id": tok.bos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    tok.save_pretrained(tmp_path / "clip")
    scorer = ClipScorer.from_pretrained(tmp_path / "clip")
    rng = np.random.default_rng(0)
    src, tgt = (rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2))
    e = RIEEdit("x", "change_colour", "a red circle", "a blue circle")
    rows = scorer(e, np.stack([src, tgt]), src, tgt)
    assert rows[0]["clip_image_source"] == pytest.approx(1.0, abs=1e-5)
    assert rows[1]["clip_image_target"] == pytest.approx(1.0, abs=1e-5)
    assert -1 <= rows[0]["clip_text_edit"] <= 1 and rows[0]["lpips_target"] is None
    assert "lpips" in scorer.unavailable
    with_lpips = ClipScorer(scorer.model, scorer.tokenizer, lpips=lambda a, b: np.abs(a - b.astype(float)).mean((1, 2, 3)))
    assert with_lpips(e, src[None], src, tgt)[0]["lpips_source"] == 0.0


def test_cli_runs_a_published_file_with_a_mask_dir(tiny_pipe, tmp_path):
    from PIL import Image

    from repro.cli import main

    for block, sae in _saes().items():
        save_sae(sae, tmp_path / "saes" / block)
    assert set(load_block_saes([tmp_path / "saes"])) == set(BLOCKS)
    (tmp_path / "edits.json").write_text(json.dumps([
        {"id": "a", "source_prompt": "a red circle", "target_prompt": "a blue circle", "editing_type": "change_color"},
        {"id": "b", "source_prompt": "a red circle", "target_prompt": "a red circle", "editing_type": "change_color"},
    ]))
    (tmp_path / "masks").mkdir()
    Image.fromarray(_mask().astype(np.uint8) * 255).save(tmp_path / "masks" / "a.png")
    Image.fromarray(_mask().astype(np.uint8) * 255).save(tmp_path / "masks" / "b.png")
    out = tmp_path / "r.jsonl"
    code = main(["riebench", "--model", "tiny-random", "--device", "cpu", "--dtype", "float32",
                 "--saes", str(tmp_path / "saes"), "--edits", str(tmp_path / "edits.json"),
                 "--masks", str(tmp_path / "masks"), "--methods", "transport", "--k-transfer", "4",
                 "--m-transfer", "1", "--steps", "2", "--no-progress", "--out", str(out)])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    assert [r["method"] for r in rows if r["id"] == "a"] == ["source", "target", "transport"]
    assert [r["skipped"] is not None for r in rows if r["id"] == "b"] == [True]


def test_runner_segments_edits_without_masks(tiny_pipe):
    calls = []

    def segmenter(image, prompts):
        calls.append(tuple(prompts))
        return _mask()

    edits = [RIEEdit("seg", "change_colour", "a red circle", "a blue circle", source_mask_prompts=("circle",),
                     target_mask_prompts=("circle",)),
             RIEEdit("noprompt", "change_colour", "a red circle", "a blue circle")]
    res = run_benchmark(tiny_pipe, {}, edits, methods=["steer"], grid=GRID, blocks=["mid.0"],
                        config=RIEBenchConfig(steps=2), segmenter=segmenter, progress=False)
    assert calls == [("circle",), ("circle",)]
    assert [r["method"] for r in res.rows if r["id"] == "seg"] == ["source", "target", "steer"]
    assert "no segmenter prompts" in res.skipped[0]["reason"]


def test_every_aggregated_rate_gets_its_wilson_interval():
    import pandas as pd

    from repro.intervals import wilson
    from repro.riebench.runner import with_intervals

    rows = [{"id": f"e{i}", "category": "change_colour", "method": "transport", "blocks": "all", "k": 8, "m": 1.0,
             "skipped": None, "success": i < 3, "preserved": i != 0, "pixel_outside": 0.1} for i in range(5)]
    table = with_intervals(success_vs_preservation(pd.DataFrame(rows)))
    row = table.iloc[0]
    assert row["n_edits"] == 5 and row["success"] == pytest.approx(0.6)
    assert (row["success_lo"], row["success_hi"]) == pytest.approx(wilson(3, 5))
    assert (row["success_and_preserved_lo"], row["success_and_preserved_hi"]) == pytest.approx(wilson(2, 5))
    assert "pixel_outside_lo" not in table


def test_the_batch_size_does_not_change_what_runs_or_what_is_scored(tiny_pipe):
    """06's batch is a speed setting (profile field riebench_batch: 8 on the CPU, 64 on toy-full's GPU):
    one image per call and the whole method per call give the same edits, selections and images."""
    m = _mask()
    edits = [RIEEdit("a", "change_colour", "a red circle", "a blue circle", source_mask=m, target_mask=m, seed=1),
             RIEEdit("b", "change_colour", "a green square", "a yellow square", source_mask=m, target_mask=m, seed=2)]

    def scorer(edit, images, source, target):
        return [{"mean_px": float(np.asarray(im, np.float64).mean())} for im in images]

    runs = [run_benchmark(tiny_pipe, _saes(), edits, grid=GRID, scorer=scorer, config=RIEBenchConfig(batch_size=bs),
                          progress=False) for bs in (1, 8)]
    one, many = (r.frame().sort_values(["id", "method", "k", "m"], na_position="first").reset_index(drop=True) for r in runs)
    assert len(one) == len(many) > 0
    assert list(one["method"]) == list(many["method"]) and list(one["id"]) == list(many["id"])
    np.testing.assert_allclose(one["mean_px"], many["mean_px"], atol=0.05)  # uint8 images: at most rare 1-level flips
    assert [s["top"] for s in runs[0].selections] == [s["top"] for s in runs[1].selections]
