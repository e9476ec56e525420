"""Capture and intervention hooks: definitions checked against independent computations."""

import numpy as np
import pytest
import torch

from repro.blocks import get_block
from repro.generate import Sampling, generate
from repro.hooks import Ablate, Add, Replace, Scale, capture_updates, intervene

ALL = ["down.1.0", "down.1.1", "down.2.0", "down.2.1", "mid.0",
       "up.0.0", "up.0.1", "up.0.2", "up.1.0", "up.1.1", "up.1.2"]
PROMPTS, SEEDS = ["a red circle", "a blue square"], [1, 2]


def _hooks_left(pipe):
    unet = pipe.unet
    return len(unet._forward_pre_hooks) + sum(len(get_block(unet, b)._forward_hooks) for b in ALL)


def test_capture_equals_output_minus_input(tiny_pipe):
    seen = {}

    def reference(module, args, kwargs, output):
        seen.setdefault("x", []).append((output[0] - args[0]).detach().clone())

    handle = get_block(tiny_pipe.unet, "down.2.1").register_forward_hook(reference, with_kwargs=True)
    try:
        with capture_updates(tiny_pipe.unet, ["down.2.1"]) as cap:
            generate(tiny_pipe, PROMPTS, SEEDS, Sampling(steps=2))
    finally:
        handle.remove()
    captured = cap.updates("down.2.1")
    assert captured.shape == (2, 2, 64, 4, 4)
    torch.testing.assert_close(captured, torch.stack(seen["x"]), rtol=0, atol=0)
    assert cap.steps["down.2.1"] == [0, 1]
    assert _hooks_left(tiny_pipe) == 0


@pytest.mark.parametrize("block", ALL)
def test_ablate_and_capture_work_on_every_block(tiny_pipe, block):
    plain = generate(tiny_pipe, PROMPTS[:1], SEEDS[:1])
    with intervene(tiny_pipe.unet, {block: Ablate()}):
        with capture_updates(tiny_pipe.unet, [block]) as cap:
            ablated = generate(tiny_pipe, PROMPTS[:1], SEEDS[:1])
    assert torch.count_nonzero(cap.updates(block)) == 0  # the capture sees the edited update
    assert np.abs(plain.astype(int) - ablated).max() > 0  # and the image changed
    assert _hooks_left(tiny_pipe) == 0


def test_identity_edits_leave_images_unchanged(tiny_pipe):
    plain = generate(tiny_pipe, PROMPTS, SEEDS)
    with intervene(tiny_pipe.unet, {"mid.0": Scale(factor=1.0), "up.0.1": Replace(value=lambda u, s, h: u)}):
        same = generate(tiny_pipe, PROMPTS, SEEDS)
    assert np.abs(plain.astype(int) - same).max() <= 1


def test_add_respects_mask_and_step_window(tiny_pipe):
    direction = torch.randn(64)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[1, 2] = True
    sampling = Sampling(steps=2)
    with capture_updates(tiny_pipe.unet, ["down.2.1"]) as before:
        generate(tiny_pipe, PROMPTS, SEEDS, sampling)
    edit = Add(direction=direction, strength=3.0, mask=mask, steps=[0])
    with intervene(tiny_pipe.unet, {"down.2.1": edit}):
        with capture_updates(tiny_pipe.unet, ["down.2.1"]) as after:
            generate(tiny_pipe, PROMPTS, SEEDS, sampling)
    diff = after.updates("down.2.1")[0] - before.updates("down.2.1")[0]  # step 0: [B, C, H, W]
    expected = torch.zeros_like(diff)
    expected[:, :, 1, 2] = 3.0 * direction
    torch.testing.assert_close(diff, expected, atol=1e-5, rtol=1e-5)
    # at step 1 the edit is off: any difference there comes from the changed latents only
    assert not torch.allclose(after.updates("down.2.1")[1][:, :, 1, 2] - before.updates("down.2.1")[1][:, :, 1, 2],
                              3.0 * direction.expand(2, 64), atol=1e-3)


def test_guidance_adds_to_cond_and_subtracts_from_uncond(tiny_pipe):
    direction = torch.randn(64)
    sampling = Sampling(steps=1, guidance=5.0)
    with capture_updates(tiny_pipe.unet, ["mid.0"], cfg=True) as before:
        generate(tiny_pipe, PROMPTS, SEEDS, sampling)
    with intervene(tiny_pipe.unet, {"mid.0": Add(direction=direction, strength=2.0)}, cfg=True):
        with capture_updates(tiny_pipe.unet, ["mid.0"], cfg=True) as after:
            generate(tiny_pipe, PROMPTS, SEEDS, sampling)
    assert before.updates("mid.0", half="all").shape[1] == 4  # doubled batch under guidance
    d = direction[None, :, None, None].expand(2, 64, 4, 4)
    torch.testing.assert_close(after.updates("mid.0", "cond")[0] - before.updates("mid.0", "cond")[0], 2.0 * d, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after.updates("mid.0", "uncond")[0] - before.updates("mid.0", "uncond")[0], -2.0 * d, atol=1e-5, rtol=1e-5)


def test_hooks_are_removed_when_generation_raises(tiny_pipe):
    def boom(update, step, half):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with capture_updates(tiny_pipe.unet, ALL):
            with intervene(tiny_pipe.unet, {"up.0.0": Replace(value=boom)}):
                generate(tiny_pipe, PROMPTS, SEEDS)
    assert _hooks_left(tiny_pipe) == 0


def test_capture_selected_steps_and_dtype(tiny_pipe):
    with capture_updates(tiny_pipe.unet, ["up.0.1"], steps=[1], dtype=torch.float16) as cap:
        generate(tiny_pipe, PROMPTS, SEEDS, Sampling(steps=3))
    assert cap.steps["up.0.1"] == [1]
    assert cap.updates("up.0.1").dtype == torch.float16


def test_bad_mask_size_is_an_error(tiny_pipe):
    with pytest.raises(ValueError, match="mask of spatial size"):
        with intervene(tiny_pipe.unet, {"mid.0": Ablate(mask=torch.ones(8, 8))}):
            generate(tiny_pipe, PROMPTS[:1], SEEDS[:1])
    assert _hooks_left(tiny_pipe) == 0


def test_batch_pieces_lay_groups_end_to_end_and_cut_batches():
    from repro.hooks import batch_pieces

    got = list(batch_pieces([3, 2, 4], 4))
    assert got == [[(0, 3, 0, slice(0, 3)), (3, 4, 1, slice(0, 1))],
                   [(0, 1, 1, slice(1, 2)), (1, 4, 2, slice(0, 3))],
                   [(0, 1, 2, slice(3, 4))]]
    assert list(batch_pieces([2, 0, 1], 8)) == [[(0, 2, 0, slice(0, 2)), (2, 3, 2, slice(0, 1))]]
    assert list(batch_pieces([], 4)) == []


def test_row_segments_edit_their_rows_only_and_respect_steps():
    """by_rows on a [6, C, H, W] update equals each range's edits applied alone; rows of no piece and
    pieces without edits are untouched; an edit outside its steps does nothing."""
    from repro.hooks import by_rows

    update = torch.randn(6, 3, 2, 2)
    d1, d2 = torch.randn(3), torch.randn(3)
    pieces = [(0, 2, {"b": Add(direction=d1, strength=2.0)}), (2, 3, {}),
              (3, 6, {"b": [Add(direction=d2, mask=torch.tensor([[1.0, 0.0], [0.0, 0.0]])), Scale(factor=3.0, steps=[1])]})]
    edits = by_rows(pieces)
    assert list(edits) == ["b"] and len(edits["b"]) == 1
    seg = edits["b"][0]
    assert seg.active(0)
    out = seg.apply(update, 0, "all")
    torch.testing.assert_close(out[:2], update[:2] + 2.0 * d1[:, None, None])
    torch.testing.assert_close(out[2], update[2])
    expected = update[3:].clone()
    expected[:, :, 0, 0] += d2
    torch.testing.assert_close(out[3:], expected)
    torch.testing.assert_close(seg.apply(update, 1, "all")[3:], 3.0 * expected)  # the scale acts at step 1 only
    one = {"b": Add(direction=d1)}
    assert by_rows([(0, 6, one)]) == {"b": [one["b"]]}  # one piece: its own edits, unwrapped


@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_variants_side_by_side_equal_separate_generations(tiny_pipe, guidance):
    """generate_variants with batches cutting across variants (3 prompts, 4 images a call), per-image
    masks and a step window equals generate_with per variant, up to uint8 rounding; edits changed the images."""
    from repro.evaluate.in_loop import generate_variants, generate_with

    sampling = Sampling(steps=2, guidance=guidance)
    prompts, seeds = ["a red circle", "a blue square", "a green star"], [1, 2, 3]
    masks = torch.zeros(3, 8, 8)
    masks[0, :4], masks[1, :, :4], masks[2, 2:6, 2:6] = 1, 1, 1
    variants = [None, {"down.1.0": Add(direction=torch.randn(64), strength=20.0, mask=masks, steps=[0])},
                {"up.0.1": Ablate(), "mid.0": Scale(factor=0.0)}]
    together = generate_variants(tiny_pipe, prompts, seeds, sampling, variants, batch_size=4)
    assert [im.shape for im in together] == [(3, 64, 64, 3)] * 3
    for edits, images in zip(variants, together):
        alone = generate_with(tiny_pipe, prompts, seeds, sampling, edits, batch_size=3)
        assert np.abs(alone.astype(int) - images).max() <= 1
    assert all(np.abs(together[0].astype(int) - im).max() > 8 for im in together[1:])
    assert _hooks_left(tiny_pipe) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_variants_side_by_side_on_a_gpu():
    from repro.evaluate.in_loop import generate_variants, generate_with
    from repro.models.loading import load_pipeline

    pipe = load_pipeline("tiny-random", device="cuda", dtype="float32")
    masks = torch.ones(2, 8, 8)
    variants = [None, {"down.1.0": Add(direction=torch.randn(64), strength=20.0, mask=masks)}, {"mid.0": Ablate()}]
    together = generate_variants(pipe, PROMPTS, SEEDS, Sampling(), variants, batch_size=5)
    for edits, images in zip(variants, together):
        assert np.abs(generate_with(pipe, PROMPTS, SEEDS, Sampling(), edits).astype(int) - images).max() <= 2
    assert np.abs(together[0].astype(int) - together[1]).max() > 8
