"""The SDXL stand-ins have SDXL's exact architecture (checked on the meta device: no memory)."""

import pytest
import torch

from repro.blocks import PAPER_BLOCKS, describe_blocks
from repro.errors import ReproError
from repro.models.standin import build_unet, standin_config


@pytest.mark.parametrize("like, resolution, size", [("sdxl-turbo", 512, 16), ("sdxl-base", 1024, 32)])
def test_unet_has_sdxl_shapes(like, resolution, size):
    unet = build_unet(like, device="meta", dtype=torch.float16)
    n_params = sum(p.numel() for p in unet.parameters())
    assert abs(n_params / 1e9 - 2.567) < 0.001
    infos = {b.name: b for b in describe_blocks(unet, resolution, vae_factor=8)}
    assert len(infos) == 11
    for name in PAPER_BLOCKS:
        assert (infos[name].channels, infos[name].height, infos[name].n_layers) == (1280, size, 10)
    assert unet.config.sample_size * 8 == resolution


def test_text_encoder_configs_are_sdxls():
    te1, te2 = standin_config("sdxl-turbo", "text_encoder"), standin_config("sdxl-turbo", "text_encoder_2")
    assert (te1["hidden_size"], te1["num_hidden_layers"]) == (768, 12)
    assert (te2["hidden_size"], te2["num_hidden_layers"], te2["projection_dim"]) == (1280, 32, 1280)
    assert te1["hidden_size"] + te2["hidden_size"] == standin_config("sdxl-turbo", "unet")["cross_attention_dim"]
    assert standin_config("sdxl-turbo", "scheduler")["timestep_spacing"] == "trailing"


def test_unknown_standin():
    with pytest.raises(ReproError, match="sdxl-turbo"):
        standin_config("sd15", "unet")
