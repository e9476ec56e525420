"""Profiles: which models and settings a whole reproduction runs on.

`toy` (the default) runs every chapter on the embedded ShapesWorld models on a CPU in
minutes; `paper` points the same notebooks at SDXL Turbo / SDXL base as in the paper;
`standin` is `paper` on random-weight pipelines of SDXL's exact architecture at reduced
counts (what the real path costs on a GPU, without the weights). Any field can be
changed for one run: `get_profile("paper", {"collect_prompts": 3000})`, or in a
notebook `-p overrides '{"collect_prompts": 3000}'`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from repro.errors import ReproError, choices_hint
from repro.generate import Sampling

GRIDS = ("paper", "toy")


@dataclass(frozen=True)
class Profile:
    """Models and settings for one reproduction."""

    name: str
    turbo_model: str
    """The 1-step model the SAEs are trained on (SDXL Turbo's role)."""
    base_model: str
    """The multi-step model of the transfer chapter (SDXL base's role)."""
    turbo: Sampling
    """Sampling of the turbo model (paper: 1 step, no guidance)."""
    turbo_multistep: Sampling
    """The turbo model at several steps (paper: 4)."""
    base: Sampling
    """Sampling of the base model (paper: ~25 steps, guidance ~8)."""
    dtype: str = "auto"
    """Inference dtype (auto: fp16 on GPU, fp32 on CPU)."""
    collect_prompts: int = 2000
    """Training prompts whose updates are collected (paper: 1.5M LAION-COCO captions)."""
    prompts: str = "shapes"
    """Prompt source of the collection (a file, `hf:NAME`, or a generator such as `shapes`)."""
    eval_prompts: str = "shapes-test"
    """Held-out prompt source for evaluation chapters (never in SAE training)."""
    sae_expansion: int = 4
    """SAE features per channel (paper: 4, i.e. 5120 for 1280 channels)."""
    sae_k: int = 10
    """TopK of the SAEs (paper's released SAEs: 10)."""
    sae_batch: int = 4096
    """SAE training batch in tokens (paper: 4096)."""
    sae_steps: int = 2000
    """SAE training steps."""
    sae_lr: float = 1e-4
    """Adam lr of every SAE the profile trains (paper: 1e-4; 0: scaled to the dictionary,
    `repro.sae.config.scaled_lr`). Transfer controls train at the lr of the SAE they are compared with."""
    dead_tokens: int = 10_000_000
    """Tokens without firing after which a latent counts as dead (paper: 10M)."""
    sae_seeds: int = 2
    """SAEs trained per block from different seeds (2: seed stability is measured; 1: not)."""
    ground_truth: bool = False
    """The prompts are ShapesWorld captions and an oracle reads the images: 04-06 score
    labels, purity, causality and RIEBench exactly (only the toy's models draw ShapesWorld)."""
    control_prompts: int = 96
    """Prompts of the target setting whose updates train each transfer control SAE."""
    control_steps: int = 0
    """Training steps of each transfer control SAE at batch `sae_batch` (0: sae_steps, the budget
    of the 1-step SAE it is compared with, which makes the control a ceiling)."""
    control_budgets: int = 4
    """Points of the control SAEs' budget curve (halving), up to `control_steps`."""
    causal_features: int = 8
    """Attribute values per block 05's causality test runs on, the same number from each of the four
    families colour, shape, texture and size (rounded down, at least one each): for each, the trained
    SAE's best feature, a planted ground-truth direction and two random controls."""
    causal_scenes: int = 8
    """Scenes per feature, direction and strength in 05's causality curves (and per block in the
    calibration of their strengths)."""
    causal_strength_points: int = 8
    """Strengths per direction in 05's causality test: log-spaced up to the calibrated limit."""
    causal_calibration_norms: int = 15
    """Intervention norms tried per block when calibrating the causality strengths."""
    causal_dev_scenes: int = 96
    """Dev (training-split) scenes whose updates give the planted ground-truth directions."""
    timing_scenes: int = 8
    """Scenes per feature and window in 05's intervention-timing sweep (4-step turbo)."""
    timing_prompts: int = 16
    """Prompts of 04's intervention-timing sweep on the base model (each window x block)."""
    image_batch: int = 16
    """Images per generation call in 04's and 05's experiments, whose variants (strengths, directions,
    blocks) run side by side (`evaluate.in_loop.generate_variants`): the CPU gains nothing past a
    few dozen; a GPU with the toy's small UNet fills only with a thousand or so."""
    own_blocks: int = 0
    """With ground truth: the toy's most ablation-sensitive blocks outside the paper's four (ranked on
    `causal_dev_scenes` dev scenes) on which 05 also trains SAEs (`collect_prompts` scenes, the main SAEs'
    recipe) and runs detection and causality (`repro.features.own_blocks`); 0: none."""
    riebench_sae_k: int = 160
    """TopK of the SAEs RIEBench transports (paper: 160 of 5120 features)."""
    riebench_sae_steps: int = 0
    """Training steps of the RIEBench SAEs (0: sae_steps)."""
    riebench_edits: str = "example"
    """RIEBench edits: "shapes" (ShapesWorld RIEBench v1, scored by the oracle), "example"
    (18 everyday edits with drawn masks) or a published-format JSON file."""
    riebench_per_category: int = 0
    """Edits per category in each of the dev and test splits (0: all)."""
    riebench_batch: int = 8
    """Edited images per generation call in 06 (every method's settings of an edit side by side): the
    CPU gains nothing past a few, a GPU with the toy's small UNet fills only with many more."""
    riebench_grid: Literal["paper", "toy"] = "paper"
    """RIEBench parameter grid (`repro.riebench.methods.Grid.named`): the paper's, or the toy's
    scaled to a few hundred features."""
    description: str = ""

    def __post_init__(self) -> None:
        if self.riebench_grid not in GRIDS:
            raise ReproError(f"unknown riebench_grid {self.riebench_grid!r}: use {choices_hint(GRIDS)}")
        counts = ("sae_seeds", "control_budgets", "causal_features", "causal_scenes", "causal_strength_points",
                  "causal_calibration_norms", "causal_dev_scenes", "timing_scenes", "timing_prompts")
        from repro.ranges import (MAX_EXPANSION, MAX_IMAGE_BATCH, MAX_PROMPTS, MAX_TOKEN_BATCH, MAX_TRAIN_STEPS,
                                  check_float, check_int)

        for name in counts:
            check_int(name, getattr(self, name), 1, 1_000_000)
        check_int("collect_prompts", self.collect_prompts, 1, MAX_PROMPTS)
        check_int("control_prompts", self.control_prompts, 1, MAX_PROMPTS)
        check_int("sae_expansion", self.sae_expansion, 1, MAX_EXPANSION)
        check_int("sae_batch", self.sae_batch, 1, MAX_TOKEN_BATCH, why="tokens held in memory at once")
        check_int("sae_steps", self.sae_steps, 1, MAX_TRAIN_STEPS)
        for name in ("sae_k", "riebench_sae_k"):
            check_int(name, getattr(self, name), 1, None)
        for name in ("control_steps", "riebench_sae_steps"):  # 0: sae_steps
            check_int(name, getattr(self, name), 0, MAX_TRAIN_STEPS)
        check_int("dead_tokens", self.dead_tokens, 0, None)
        check_int("riebench_per_category", self.riebench_per_category, 0, 1_000_000, why="0 runs every edit")
        check_int("own_blocks", self.own_blocks, 0, 64, why="0 tests the paper's blocks only")
        check_int("image_batch", self.image_batch, 1, MAX_IMAGE_BATCH, why="images generated in one call")
        check_int("riebench_batch", self.riebench_batch, 1, MAX_IMAGE_BATCH, why="edited images generated in one call")
        check_float("sae_lr", self.sae_lr, 0.0, why="0 scales the lr to the dictionary")


PAPER = Profile(
    name="paper",
    turbo_model="stabilityai/sdxl-turbo",
    base_model="stabilityai/stable-diffusion-xl-base-1.0",
    turbo=Sampling(steps=1, guidance=0.0, resolution=512),
    turbo_multistep=Sampling(steps=4, guidance=0.0, resolution=512),
    base=Sampling(steps=25, guidance=8.0, resolution=1024),
    collect_prompts=1_500_000,
    prompts="hf:laion/laion-coco",
    eval_prompts="hf:laion/laion-coco:validation",
    sae_steps=93_750,
    description="SDXL Turbo and SDXL base as in the paper (GPU strongly advised)",
)

_TOY = Profile(
    name="toy",
    turbo_model="shapes-turbo",
    base_model="shapes-base",
    turbo=Sampling(steps=1, guidance=0.0),
    turbo_multistep=Sampling(steps=4, guidance=0.0),
    base=Sampling(steps=20, guidance=5.0),
    collect_prompts=2000,
    sae_batch=1024,
    # With the lr scaled to the dictionary, held-out EV of down.2.1 on the stored toy
    # activations: 0.909 at 1000 steps, 0.915 at 1500 (0.840 at 1500 steps of 1e-4).
    sae_steps=1000,
    # At the paper's 1e-4 a few thousand steps leave a small dictionary at its random start
    # (median decoder cosine 0.91 to init): the lr is scaled to the dictionary instead.
    sae_lr=0.0,
    dead_tokens=200_000,
    ground_truth=True,
    # CPU budget (`make reproduce` ~20 min on 2 cores, benchmarks/investigations.md): 12 control SAEs
    # (4 blocks x 3 cells, the four blocks of a cell in one run) at a quarter of the 1-step
    # SAEs' budget on 48 prompts of each setting; 04 shows their EV against budget, so whether
    # they have flattened is visible. The RIEBench SAEs get 400 steps.
    control_prompts=48,
    control_steps=250,
    control_budgets=3,
    riebench_sae_steps=400,
    # Fewer features, scenes and prompts in 04-05's curves than the defaults: every curve
    # and control stays, with wider intervals.
    causal_features=4,
    causal_strength_points=4,
    causal_calibration_norms=8,
    causal_dev_scenes=48,
    timing_scenes=4,
    timing_prompts=8,  # 04's early-vs-late windows: a per-image interval needs more than a handful
    # 01: ablating down.2.1, up.0.0 or up.0.1 barely changes the toy's images; causality is also tested in
    # the three blocks whose ablation hurts most outside the paper's four (05)
    own_blocks=3,
    # The paper's RIEBench sparsity as a share of the dictionary (160 / 5120 = 1/32) on
    # the toy's 512 features; the same as a share of the channels (160 / 1280 = 16 / 128).
    riebench_sae_k=16,
    riebench_edits="shapes",
    riebench_per_category=2,
    riebench_grid="toy",
    description="embedded ShapesWorld models (shapes-turbo, shapes-base) on the CPU",
)

PROFILES: dict[str, Profile] = {
    "toy": _TOY,
    "paper": PAPER,
    # The toy at the counts issue #27 asks of a decisive test (GPU: <= 15 min on one H100): the same
    # models and chapters, SAEs trained longer on four times the prompts, controls at the 1-step SAEs'
    # own budget on as many distinct tokens, 8 causal features a block over the attribute families,
    # 48 scenes each, RIEBench at 16 edits a category.
    "toy-full": dataclasses.replace(
        _TOY,
        name="toy-full",
        collect_prompts=8000,
        sae_steps=8000,
        control_prompts=500,
        control_steps=0,
        control_budgets=4,
        riebench_sae_steps=2000,
        causal_features=8,
        causal_scenes=48,
        timing_scenes=16,
        timing_prompts=32,
        riebench_per_category=16,
        image_batch=1024,  # 05 generated 172 images/s on one H100 at 16 a call: launch-bound (~2.7 GB at 1024)
        riebench_batch=256,  # 06 took 486 s on one H100 at 8 a call (31 images/s); an edit's ~100 settings in one call
        description="the toy's models at the decisive counts of issue #27 (GPU advised: the whole book took 19 min "
                    "on one H100 before 04-06 generated their variants side by side)",
    ),
    # The paper's sampling, dtype and SAE sizes on stand-ins (random weights, built on the
    # device in seconds), ShapesWorld captions as prompts (no dataset download), counts cut
    # so that every chapter runs in one GPU session: its pictures are noise, its costs real.
    "standin": dataclasses.replace(
        PAPER,
        name="standin",
        turbo_model="standin-sdxl-turbo",
        base_model="standin-sdxl-base",
        collect_prompts=2048,
        prompts="shapes",
        eval_prompts="shapes-test",
        sae_steps=2000,
        description="the paper profile on random-weight SDXL-architecture stand-ins, reduced counts (GPU)",
    ),
}

_SAMPLINGS = ("turbo", "turbo_multistep", "base")


def get_profile(name: str, overrides: dict[str, Any] | None = None) -> Profile:
    """The profile `name`, with `overrides` {field: value} applied (samplings as dicts of
    Sampling fields, e.g. {"base": {"steps": 10}})."""
    if name not in PROFILES:
        raise ReproError(f"unknown profile {name!r}: use {choices_hint(PROFILES)}")
    profile = PROFILES[name]
    if not overrides:
        return profile
    fields = {f.name: f for f in dataclasses.fields(Profile)}
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in fields or key == "name":
            raise ReproError(f"profile has no field {key!r} to override: use {choices_hint([f for f in fields if f != 'name'])}")
        if key in _SAMPLINGS:
            if not isinstance(value, dict):
                raise ReproError(f"override {key} must be a mapping of Sampling fields, e.g. {{\"steps\": 4}}")
            sampling_fields = [f.name for f in dataclasses.fields(Sampling)]
            unknown = sorted(set(value) - set(sampling_fields))
            if unknown:
                raise ReproError(f"override {key} has no field {unknown[0]!r}: use {choices_hint(sampling_fields)}")
            current = getattr(profile, key)
            typed = {name: _checked(f"{key}.{name}", v, (int, type(None)) if name == "resolution" else type(getattr(current, name)))
                     for name, v in value.items()}
            try:
                value = dataclasses.replace(current, **typed)
            except ReproError as exc:  # Sampling's range checks name the field only
                raise ReproError(f"override {key}: {exc}") from None
        else:
            value = _checked(key, value, type(getattr(profile, key)))
        changes[key] = value
    try:
        return dataclasses.replace(profile, **changes)
    except ReproError as exc:  # a range check of Profile
        raise ReproError(f"override of profile {name!r}: {exc}") from None


def _checked(key: str, value: Any, expected: type | tuple[type, ...]) -> Any:
    """`value` as the type of the field it overrides (whole floats pass as ints, ints as floats)."""
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if int in kinds and isinstance(value, float) and value.is_integer():
        value = int(value)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise ReproError(f"override {key} must be {names}, got {value!r}")
    return value
