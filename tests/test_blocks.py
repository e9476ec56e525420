import pytest

from repro.blocks import (
    PAPER_BLOCKS,
    block_names,
    describe_blocks,
    get_block,
    module_path,
    resolve_blocks,
    short_name,
)
from repro.errors import ReproError
from repro.hooks import capture_updates
from repro.generate import generate

ALL_SDXL = ["down.1.0", "down.1.1", "down.2.0", "down.2.1", "mid.0",
            "up.0.0", "up.0.1", "up.0.2", "up.1.0", "up.1.1", "up.1.2"]


def test_block_names_follow_sdxl_topology(tiny_pipe):
    assert block_names(tiny_pipe.unet) == ALL_SDXL
    assert set(PAPER_BLOCKS) <= set(ALL_SDXL)


@pytest.mark.parametrize("name", ALL_SDXL)
def test_names_map_both_ways(tiny_pipe, name):
    path = module_path(name)
    assert short_name(path) == name
    assert short_name("unet." + path) == name
    assert get_block(tiny_pipe.unet, name) is tiny_pipe.unet.get_submodule(path)
    assert type(get_block(tiny_pipe.unet, path)).__name__ == "Transformer2DModel"


def test_paper_names_are_the_documented_modules():
    assert module_path("down.2.1") == "down_blocks.2.attentions.1"
    assert module_path("mid.0") == "mid_block.attentions.0"
    assert module_path("up.0.0") == "up_blocks.0.attentions.0"
    assert module_path("up.0.1") == "up_blocks.0.attentions.1"


@pytest.mark.parametrize("bad", ["down.0.0", "up.5.1", "middle", "down.2", "mid.3"])
def test_unknown_block_lists_valid_names(tiny_pipe, bad):
    with pytest.raises(ReproError) as err:
        get_block(tiny_pipe.unet, bad)
    message = str(err.value)
    assert bad in message and "down.2.1" in message and "\n" not in message


def test_resolve_blocks_defaults_and_duplicates(tiny_pipe):
    assert resolve_blocks(tiny_pipe.unet, None) == list(PAPER_BLOCKS)
    assert resolve_blocks(tiny_pipe.unet, "all") == ALL_SDXL
    assert resolve_blocks(tiny_pipe.unet, "mid.0, up_blocks.0.attentions.1") == ["mid.0", "up.0.1"]
    with pytest.raises(ReproError):
        resolve_blocks(tiny_pipe.unet, ["mid.0", "mid_block.attentions.0"])


def test_aliases_inside_lists(tiny_pipe):
    # `--blocks all` reaches the library as ("all",) once a comma list is split
    assert resolve_blocks(tiny_pipe.unet, ("all",)) == ALL_SDXL
    assert resolve_blocks(tiny_pipe.unet, ["paper"]) == list(PAPER_BLOCKS)
    assert resolve_blocks(tiny_pipe.unet, "paper,down.1.0") == [*PAPER_BLOCKS, "down.1.0"]
    with pytest.raises(ReproError, match="empty"):
        resolve_blocks(tiny_pipe.unet, " , ")


# 72 and 136 px: latent sides 18 and 34 (4x VAE) are not multiples of 4, the downsampled
# sides round up (9 -> 5, 17 -> 9) and the up path comes back to the skips' sizes.
@pytest.mark.parametrize("resolution, small", [(64, 4), (72, 5), (136, 9)])
def test_describe_blocks_matches_captured_shapes(tiny_pipe, resolution, small):
    from repro.generate import Sampling

    infos = describe_blocks(tiny_pipe.unet, resolution=resolution, vae_factor=4)
    with capture_updates(tiny_pipe.unet, ALL_SDXL) as cap:
        generate(tiny_pipe, ["a red circle"], [0], Sampling(resolution=resolution))
    for info in infos:
        update = cap.updates(info.name)
        assert tuple(update.shape) == (1, 1, info.channels, info.height, info.width), info.name
    by_name = {i.name: i for i in infos}
    assert by_name["down.2.1"].height == small and by_name["up.1.0"].height == by_name["down.1.0"].height
    assert by_name["down.2.1"].n_layers == 2 and by_name["down.1.0"].n_layers == 1
    assert [i.name for i in infos if i.in_paper] == list(PAPER_BLOCKS)
