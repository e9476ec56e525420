"""Stand-ins for SDXL Turbo and SDXL base: their exact architecture, random weights.

The real weights cannot be downloaded everywhere (not on our machines, not on many CI
runners), but the cost and the shapes of the real path can be measured on a pipeline of
exactly SDXL's architecture — UNet 2.57B parameters, CLIP ViT-L and OpenCLIP bigG text
towers, SDXL's VAE — built from the configurations in `repro/models/configs/` (taken from
the published model cards; no weights are committed). A folder written here carries a
`repro_standin.json` marker so chapters can say that their pictures are noise.
"""

from __future__ import annotations

import contextlib
import json
from importlib import resources
from pathlib import Path

import torch

from repro.errors import ReproError, choices_hint
from repro.io import provenance

STANDINS = ("sdxl-turbo", "sdxl-base")
MARKER = "repro_standin.json"


def standin_config(like: str, component: str) -> dict:
    """The stored configuration of `component` (unet, vae, text_encoder, text_encoder_2, scheduler)."""
    if like not in STANDINS:
        raise ReproError(f"no stand-in configuration for {like!r}: use {choices_hint(STANDINS)}")
    text = resources.files("repro.models").joinpath("configs", like, f"{component}.json").read_text()
    return json.loads(text)


@contextlib.contextmanager
def _seeded(seed: int):
    state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def build_unet(like: str = "sdxl-turbo", device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float16, seed: int = 0):
    """SDXL's UNet with random weights, created directly on `device` (2.57B parameters)."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in standin_config(like, "unet").items() if not k.startswith("_")}
    with _seeded(seed), torch.device(device):
        unet = UNet2DConditionModel(**config)
    return unet.to(dtype=dtype).eval()


def build_standin(like: str = "sdxl-turbo", device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float16, seed: int = 0):
    """A StableDiffusionXLPipeline of SDXL's exact architecture with random weights."""
    import tempfile

    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from repro.models.build import BASIC_WORDS
    from repro.models.tokenizer import write_clip_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(tmp, BASIC_WORDS)
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    unet = build_unet(like, device, dtype, seed)
    with _seeded(seed + 1), torch.device(device):
        vae_cfg = {k: v for k, v in standin_config(like, "vae").items() if not k.startswith("_")}
        vae = AutoencoderKL(**vae_cfg)
        te_cfgs = [standin_config(like, n) for n in ("text_encoder", "text_encoder_2")]
        text_encoder = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in te_cfgs[0].items() if k != "architectures"}))
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**{k: v for k, v in te_cfgs[1].items() if k != "architectures"}))
    sched_cfg = {k: v for k, v in standin_config(like, "scheduler").items() if not k.startswith("_")}
    scheduler_cls = EulerAncestralDiscreteScheduler if like == "sdxl-turbo" else EulerDiscreteScheduler
    pipe = StableDiffusionXLPipeline(
        vae=vae.to(dtype=dtype).eval(), text_encoder=text_encoder.to(dtype=dtype).eval(),
        text_encoder_2=text_encoder_2.to(dtype=dtype).eval(), tokenizer=tokenizer, tokenizer_2=tokenizer,
        unet=unet, scheduler=scheduler_cls(**sched_cfg), add_watermarker=False,
    )
    pipe.repro_standin = like
    return pipe


def write_standin(like: str, folder: str | Path, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """Build the stand-in and save it in the save_pretrained layout, with its marker file."""
    from repro.io import write_json_atomic

    folder = Path(folder)
    pipe = build_standin(like, device=device, dtype=dtype, seed=seed)
    pipe.save_pretrained(folder, safe_serialization=True)
    write_json_atomic(folder / MARKER, {"like": like, "seed": seed, "dtype": str(dtype), **provenance()})
    return folder


def is_standin(pipe_or_folder) -> str | None:
    """The name a stand-in imitates ("sdxl-turbo"/"sdxl-base"), or None for real weights.

    Takes a pipeline, a model name (`standin-sdxl-turbo`) or a saved folder."""
    if isinstance(pipe_or_folder, str) and pipe_or_folder.removeprefix("standin-") in STANDINS \
            and pipe_or_folder.startswith("standin-"):
        return pipe_or_folder.removeprefix("standin-")
    if isinstance(pipe_or_folder, (str, Path)):
        marker = Path(pipe_or_folder) / MARKER
        return json.loads(marker.read_text())["like"] if marker.exists() else None
    return getattr(pipe_or_folder, "repro_standin", None)


def standin_note(*pipes_or_names) -> str | None:
    """One line for a chapter to print when any of its models is a stand-in, else None."""
    like = sorted({name for p in pipes_or_names if (name := is_standin(p))})
    if not like:
        return None
    return (f"NOTE: random-weight stand-in of {' and '.join(like)} (SDXL's exact architecture, no trained "
            "weights): every picture and number below is noise; only the costs (time, memory, rates) are real.")
