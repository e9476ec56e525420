"""Load any SDXL-format diffusers pipeline: hub id, local folder, or one of our names.

Names we know: `shapes-turbo` / `shapes-base` (the embedded ShapesWorld models under
`models/`), `tiny-random` (built in code, random weights), `standin-sdxl-turbo` /
`standin-sdxl-base` (SDXL's exact architecture with random weights, built in memory on
the target device: see `repro.models.standin`), and the aliases `sdxl-turbo` / `sdxl-base`
for the hub ids. Anything else is a local folder or a hub id.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from repro.devices import pick_device, pick_dtype
from repro.errors import ReproError
from repro.paths import models_dir

HUB_ALIASES = {
    "sdxl-turbo": "stabilityai/sdxl-turbo",
    "sdxl-base": "stabilityai/stable-diffusion-xl-base-1.0",
}
EMBEDDED = ("shapes-turbo", "shapes-base")
BUILT = ("tiny-random", "tiny-random-base", "standin-sdxl-turbo", "standin-sdxl-base")

# The files every SDXL pipeline folder holds (weights are checked per component below).
REQUIRED_FILES = (
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "text_encoder_2/config.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer_2/tokenizer_config.json",
    "scheduler/scheduler_config.json",
)
WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2")
SDXL_CLASSES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")


def resolve_source(source: str | os.PathLike) -> str | Path:
    """Map a model name to a local folder (Path) or a hub id (str); built names pass through."""
    source = os.fspath(source)
    if source in BUILT:
        return source
    if source in EMBEDDED:
        folder = models_dir() / source
        if not folder.exists():
            raise ReproError(
                f"the embedded model {source!r} is not at {folder}: run `make toy-model` "
                "(or `repro toy train`) to train it, or set REPRO_MODELS_DIR to the folder holding it"
            )
        return folder
    source = HUB_ALIASES.get(source, source)
    path = Path(source).expanduser()
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        return path
    return source


def check_pipeline_folder(folder: Path) -> None:
    """Raise ReproError naming the first missing file if `folder` is not an SDXL pipeline."""
    if not folder.is_dir():
        raise ReproError(
            f"model folder {folder} does not exist: pass an SDXL-format pipeline folder "
            "(save_pretrained layout), a hub id such as stabilityai/sdxl-turbo, or shapes-turbo"
        )
    for name in REQUIRED_FILES:
        if not (folder / name).exists():
            raise ReproError(
                f"{folder} is not an SDXL pipeline folder: {name} is missing "
                "(expected the diffusers save_pretrained layout of StableDiffusionXLPipeline)"
            )
    for tok in ("tokenizer", "tokenizer_2"):
        if not any((folder / tok / f).exists() for f in ("vocab.json", "tokenizer.json")):
            raise ReproError(f"{folder} is not an SDXL pipeline folder: {tok}/vocab.json (or tokenizer.json) is missing")
    index = json.loads((folder / "model_index.json").read_text())
    if index.get("_class_name") not in SDXL_CLASSES:
        raise ReproError(
            f"{folder} holds a {index.get('_class_name')!r}, not an SDXL pipeline "
            f"({' or '.join(SDXL_CLASSES)}): point at an SDXL-format model"
        )
    for component in WEIGHTED:
        files = list((folder / component).glob("*.safetensors")) + list((folder / component).glob("*.bin"))
        if not files:
            raise ReproError(f"{folder} is missing the weights of {component}: {component}/*.safetensors not found")


def load_pipeline(
    source: str | os.PathLike = "tiny-random",
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    local_files_only: bool | None = None,
):
    """A `StableDiffusionXLPipeline` on the chosen device and dtype, progress bars off.

    `source`: `shapes-turbo`, `shapes-base`, `tiny-random`, `sdxl-turbo`, `sdxl-base`, a
    local folder in the save_pretrained layout, or a hub id. Offline use works from a
    local folder or the local hub cache; a model that cannot be found gets one ReproError
    saying how to provide it.
    """
    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    quiet_libraries()
    resolved = resolve_source(source)
    if isinstance(resolved, str) and resolved.startswith("standin-"):
        from repro.models.standin import build_standin

        pipe = build_standin(resolved.removeprefix("standin-"), device=device, dtype=dtype)
    elif isinstance(resolved, str) and resolved in BUILT:
        from repro.models.build import build_pipeline

        pipe = build_pipeline(kind="base" if resolved.endswith("base") else "turbo")
    elif isinstance(resolved, Path):
        check_pipeline_folder(resolved)
        pipe = _from_pretrained(resolved, dtype, local_files_only=True)
    else:
        pipe = _from_hub(resolved, dtype, local_files_only)
    pipe = pipe.to(device=device, dtype=dtype)
    decode_in_chunks(pipe)
    pipe.set_progress_bar_config(disable=True)
    pipe.repro_source = str(source)
    return pipe


DECODE_PIXELS = 1024 * 1024
"""Output pixels the VAE decodes in one call. The SDXL decoder at 1024 px needs ~2.5 GiB per image
(decoding 16 at once took most of an H100), so one such image a call, as diffusers' slicing does;
but one image a call also for 128-px toy images left a GPU idle through ~50,000 sequential decodes
in 05: the same budget in pixels decodes 4 images at 512 px and 64 at 128 px."""


def decode_in_chunks(pipe, max_pixels: int = DECODE_PIXELS) -> None:
    """Make `pipe.vae.decode` decode at most `max_pixels` output pixels a call (at least one image),
    in place of diffusers' one-image slicing; no VAE layer couples the images of a batch."""
    vae, upscale = pipe.vae, vae_factor(pipe)
    vae.disable_slicing()
    if not hasattr(vae, "repro_decode"):  # diffusers' own (bound, with its hooks), kept once: calls again re-budget
        vae.repro_decode = vae.decode
    decode = vae.repro_decode

    def chunked(z, return_dict: bool = True, **kwargs):
        n = max(1, max_pixels // (z.shape[-2] * z.shape[-1] * upscale**2))
        outs = [decode(part, **kwargs) for part in z.split(n)]
        out = outs[0] if len(outs) == 1 else type(outs[0])(sample=torch.cat([o.sample for o in outs]))
        return out if return_dict else (out.sample,)

    vae.decode = chunked


def _from_pretrained(where, dtype, local_files_only, **kwargs):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(
        where, dtype=dtype, local_files_only=local_files_only, use_safetensors=None, **kwargs
    )


def _from_hub(repo_id: str, dtype: torch.dtype, local_files_only: bool | None):
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    variant = "fp16" if dtype == torch.float16 else None
    errors = []
    for kwargs in ([{"variant": variant}] if variant else []) + [{}]:
        try:
            return _from_pretrained(repo_id, dtype, local_files_only, **kwargs)
        except (OSError, ValueError, EnvironmentError) as exc:
            errors.append(exc)
    raise ReproError(
        f"model {repo_id!r} is neither a local folder nor in the local Hugging Face cache, and "
        f"could not be downloaded ({type(errors[-1]).__name__}): download it where there is "
        f"internet (`hf download {repo_id}`) and pass its folder, or use --model shapes-turbo"
    ) from errors[-1]


def quiet_libraries() -> None:
    """Silence diffusers/transformers chatter (loading bars, advisory warnings) for our users."""
    import diffusers
    import transformers

    # SDXL pipelines call their own deprecated `upcast_vae` when decoding fp16 with SDXL's
    # VAE: a warning about diffusers' internals that users cannot act on.
    warnings.filterwarnings("ignore", message=".*upcast_vae.*", category=FutureWarning)
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def vae_factor(pipe) -> int:
    """How much the VAE shrinks an image side into the latent (SDXL: 8, ShapesWorld: 4)."""
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def default_resolution(pipe) -> int:
    """The image side the UNet was built for: `sample_size` times the VAE factor."""
    return int(pipe.unet.config.sample_size) * vae_factor(pipe)
