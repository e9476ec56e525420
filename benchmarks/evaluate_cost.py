"""Cost model of `04_evaluate`: what each cell asks of the GPU, and how long that takes on an H200.

    python benchmarks/evaluate_cost.py                        # standin profile, the notebook's default counts
    python benchmarks/evaluate_cost.py --params '{"n_eval": 8}' --overrides '{"control_steps": 200}' --json out.json

Counts come from the code, not from this file: the profile's fields (`repro.profiles`) and the
notebook's `parameters` cell (`repro.notebooks.default_parameters`), with `--params` on top.
Per cell it counts UNet image-forwards (model, resolution, UNet batch; x2 under guidance), VAE
decodes, SAE training tokens and SAE encodings (rows of the held-out updates through each SAE).
The work per unit comes from SDXL's architecture on the meta device (no weights, no GPU):
`torch.utils.flop_counter` FLOPs of one UNet forward and one VAE decode at each resolution, and
the shapes of the evaluated blocks. The rates are the H200's measured ones
(benchmarks/results/gpu_ceiling_h200_alone: `unet.json`, `calib.json`, `sae_graph.json`),
scaled by FLOPs, plus a few stated assumptions (`--help`). "before" is the code before issue
#17's fix (every held-out row's x and residual copied to the host in float64 and summed there,
once per SAE; bootstrap intervals as a Python loop of 1000 resamples); "after" is this tree.
The UNet time alone is the bound: it does not shrink without changing what 04 measures.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_ceiling_h200_alone"
ARCH = {"stabilityai/sdxl-turbo": "sdxl-turbo", "stabilityai/stable-diffusion-xl-base-1.0": "sdxl-base"}


def _arch(model: str) -> str:
    if model.startswith("standin-"):
        return model.removeprefix("standin-")
    if model in ARCH:
        return ARCH[model]
    raise SystemExit(f"no SDXL-architecture configuration for {model!r}: the cost model covers the paper's "
                     f"models and their stand-ins ({', '.join(ARCH)})")


def model_facts(model: str, resolutions: set[int], blocks: list[str]) -> dict[int, dict]:
    """{resolution: {"unet_tflop", "vae_tflop", "blocks": {block: (positions, channels)}}} on the meta device."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from repro.blocks import get_block
    from repro.models.standin import standin_config

    like = _arch(model)

    def cfg(part):
        return {k: v for k, v in standin_config(like, part).items() if not k.startswith("_")}

    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg("unet")).half()
        vae = AutoencoderKL(**cfg("vae"))
    te2 = standin_config(like, "text_encoder_2")
    shapes: dict[str, tuple] = {}
    for b in blocks:
        get_block(unet, b).register_forward_hook(lambda m, a, out, b=b: shapes.__setitem__(b, tuple((out[0] if isinstance(out, tuple) else out.sample).shape)))
    facts = {}
    for res in sorted(resolutions):
        lat = res // 8
        kw = dict(device="meta", dtype=torch.half)
        added = {"text_embeds": torch.zeros(1, te2["projection_dim"], **kw), "time_ids": torch.zeros(1, 6, **kw)}
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            unet(torch.zeros(1, 4, lat, lat, **kw), torch.tensor(10.0, device="meta"),
                 encoder_hidden_states=torch.zeros(1, 77, unet.config.cross_attention_dim, **kw), added_cond_kwargs=added)
        unet_flop = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            vae.decode(torch.zeros(1, 4, lat, lat, device="meta"))
        facts[res] = {"unet_tflop": unet_flop / 1e12, "vae_tflop": fc.get_total_flops() / 1e12,
                      "blocks": {b: (s[2] * s[3], s[1]) for b, s in shapes.items()}}
    return facts


def measured_rates(args) -> dict:
    """Rates of the H200 from the stored measurements (what a flag does not override)."""
    unet = json.loads((RESULTS / "unet.json").read_text())
    calib = json.loads((RESULTS / "calib.json").read_text())
    graph = json.loads((RESULTS / "sae_graph.json").read_text())
    by_batch = {1: calib["unet_fwd_B1_img_per_s"], 8: calib["unet_fwd_B8_img_per_s"],
                32: unet["B32"]["images_per_s"], 64: unet["B64"]["images_per_s"]}
    sae = {r["n_features"]: graph["config"]["batch_size"] / r["ms_per_step"] * 1e3 for r in graph["results"]}
    return {"unet_512_img_per_s_by_batch": by_batch, "vae_512_fp16_B1_img_per_s": calib["vae_decode_B1_img_per_s"],
            "sae_graphed_tokens_per_s_by_features": sae}


def unet_seconds(forwards: int, batch: int, tflop: float, tflop_512: float, by_batch: dict[int, float]) -> float:
    """Seconds for `forwards` image-forwards at UNet batch `batch` of a model costing `tflop` per
    image: the 512-px rate at the batch of the same work (batch x tflop / tflop_512), scaled by FLOPs."""
    equiv = batch * tflop / tflop_512
    xs = sorted(by_batch)
    if equiv <= xs[0]:
        rate = by_batch[xs[0]] * equiv / xs[0]
    elif equiv >= xs[-1]:
        rate = by_batch[xs[-1]]
    else:
        lo = max(x for x in xs if x <= equiv)
        hi = min(x for x in xs if x >= equiv)
        f = 0 if hi == lo else (math.log(equiv) - math.log(lo)) / (math.log(hi) - math.log(lo))
        rate = by_batch[lo] + f * (by_batch[hi] - by_batch[lo])
    return forwards / (rate * tflop_512 / tflop)


def cost_model(profile_name: str, overrides: dict, params: dict, args) -> dict:
    from repro.blocks import PAPER_BLOCKS
    from repro.evaluate.in_loop import step_windows
    from repro.evaluate.transfer import budget_points
    from repro.notebooks import check_parameters, default_parameters
    from repro.profiles import get_profile

    prof = get_profile(profile_name, overrides)
    P = check_parameters("04_evaluate", {**default_parameters("04_evaluate"), **params, "profile": profile_name})
    blocks = list(args.blocks.split(",")) if args.blocks else list(PAPER_BLOCKS)
    n_control = P["n_control"] or prof.control_prompts
    n_timing = P["n_timing"] or prof.timing_prompts
    n_eval, n_loop, bs = P["n_eval"], P["n_loop"], P["batch_size"]
    control_steps = prof.control_steps or prof.sae_steps
    budgets = budget_points(control_steps, prof.control_budgets)
    width = prof.sae_expansion  # features per channel
    n_boot = 1000  # evaluate_reconstruction's and curves_from_sums' default
    seeds = prof.sae_seeds > 1

    samplings = {"turbo": prof.turbo, "turbo_multistep": prof.turbo_multistep, "base": prof.base}
    models = {"turbo": prof.turbo_model, "turbo_multistep": prof.turbo_model, "base": prof.base_model}
    res_of = {k: s.resolution or 512 for k, s in samplings.items()}
    need: dict[str, set] = {}
    for k in samplings:
        need.setdefault(models[k], set()).add(res_of[k])
    need.setdefault(prof.turbo_model, set()).add(512)
    facts = {m: model_facts(m, r, blocks) for m, r in need.items()}
    rates = measured_rates(args)
    by_batch = rates["unet_512_img_per_s_by_batch"]
    tflop_512 = facts[prof.turbo_model][512]["unet_tflop"]
    vae_512 = facts[prof.turbo_model][512]["vae_tflop"]
    vae_img_s = rates["vae_512_fp16_B1_img_per_s"] / args.vae_fp32_slowdown  # the pipeline decodes in fp32, one image at a time
    sae_rates = rates["sae_graphed_tokens_per_s_by_features"]
    channels = facts[prof.turbo_model][512]["blocks"][blocks[0]][1]
    n_features = width * channels
    sae_rate = sae_rates[min(sae_rates, key=lambda f: abs(f - n_features))]
    enc_rows_s = args.fp32_tflops * 1e12 / (2 * channels * n_features * args.encode_flop_factor)

    cells = []

    def cell(name, *, setting=None, forwards=0, batch=1, decodes=0, train_tokens=0, enc_rows=0, enc_rows_before=None,
             host_f64_bytes=0, ev_calls=0, ev_draws_calls=0, note=""):
        s = samplings[setting] if setting else None
        f = facts[models[setting]][res_of[setting]] if setting else None
        unet_s = unet_seconds(forwards, batch, f["unet_tflop"], tflop_512, by_batch) if forwards else 0.0
        vae_s = decodes * (f["vae_tflop"] / vae_512) / vae_img_s if decodes else 0.0
        train_s = train_tokens / sae_rate
        enc_s = enc_rows / enc_rows_s
        enc_before_s = (enc_rows if enc_rows_before is None else enc_rows_before) / enc_rows_s
        host_s = host_f64_bytes / (args.host_f64_gbs * 1e9)
        boot_before = ev_calls * args.ev_call_us * 1e-6
        boot_after = ev_draws_calls * args.ev_draws_ms * 1e-3
        cells.append({
            "cell": name, "model": models[setting] if setting else None,
            "resolution": res_of[setting] if setting else None,
            "steps": s.steps if s else None, "guidance": bool(s and s.cfg),
            "unet_image_forwards": forwards, "unet_batch": batch, "unet_tflop": round(forwards * f["unet_tflop"], 1) if f else 0,
            "vae_decodes": decodes, "sae_train_tokens": train_tokens, "sae_encode_rows": enc_rows,
            "host_float64_gb_before": round(host_f64_bytes / 1e9, 1),
            "seconds": {"unet": round(unet_s, 1), "vae": round(vae_s, 1), "sae_train": round(train_s, 1),
                        "encode": round(enc_s, 1), "host_float64_before": round(host_s, 1),
                        "bootstrap_before": round(boot_before, 1), "bootstrap_after": round(boot_after, 1)},
            "before_s": round(unet_s + vae_s + train_s + enc_before_s + host_s + boot_before, 1),
            "after_s": round(unet_s + vae_s + train_s + enc_s + boot_after, 1),
            "bound_s": round(unet_s, 1), "note": note,
        })

    def cfgx(k):
        return 2 if samplings[k].cfg else 1

    def pos(k, b):
        return facts[models[k]][res_of[k]]["blocks"][b][0]

    # 1. reconstruction on the 1-step turbo (trained SAE + a random one; + the second seed's, encoded once)
    t = samplings["turbo"]
    rows = sum(n_eval * t.steps * pos("turbo", b) for b in blocks)
    per_sae_bytes = rows * channels * 8 * 2
    cell("1 reconstruction (turbo, 1 step)", setting="turbo", forwards=n_eval * t.steps * cfgx("turbo"),
         batch=min(bs, n_eval) * cfgx("turbo"), enc_rows=rows * (2 + seeds),
         ev_calls=len(blocks) * (1 + seeds) * n_boot, ev_draws_calls=len(blocks) * (1 + seeds),
         note="capture_eval_updates via the pipeline; evaluate_reconstruction per block (+ random SAE, + seed 1)")
    # 2. in the loop: original + 3 variants per block (+ 2 all-block variants), decoded to pixels
    n_var = 3 * len(blocks) + (2 if len(blocks) > 1 else 0)
    gens = (1 + n_var) * n_loop
    sae_variants = len(blocks) + (len(blocks) if len(blocks) > 1 else 0)
    cell("2 in the loop (turbo, 1 step)", setting="turbo", forwards=gens * t.steps * cfgx("turbo"),
         batch=min(bs, n_loop) * cfgx("turbo"), decodes=gens,
         enc_rows=sae_variants * n_loop * t.steps * cfgx("turbo") * pos("turbo", blocks[0]),
         note=f"{1 + n_var} generations of {n_loop} images, VAE in fp32 one image at a time")
    # 3. transfer: per setting, control sample + controls + held-out stream
    for k, label in (("turbo_multistep", "turbo, multi-step"), ("base", "base, guided")):
        s = samplings[k]
        halves = 2 if s.cfg else 1
        per = max(1, -(-budgets[-1] * prof.sae_batch // (n_control * s.steps)))
        sample_rows = sum(n_control * s.steps * min(per, pos(k, b)) for b in blocks)
        cell(f"3 transfer {label}: control sample", setting=k, forwards=n_control * s.steps * cfgx(k),
             batch=min(bs, n_control) * cfgx(k),
             note=f"{sample_rows * halves:,} rows ({sample_rows * halves * channels * 2 / 1e9:.1f} GB 16-bit) kept on the GPU")
        cell(f"3 transfer {label}: control SAEs", setting=None,
             train_tokens=halves * len(blocks) * budgets[-1] * prof.sae_batch,
             note=f"{halves} run(s) of {len(blocks)} SAEs x {budgets[-1]} steps of {prof.sae_batch} (graphed, "
                  f"{sae_rate / 1e6:.2f}M tokens/s per SAE), snapshots at {budgets}")
        held = sum(n_eval * s.steps * pos(k, b) for b in blocks) * halves  # rows per SAE
        n_saes = 1 + len(budgets)
        overlap_before = sum(2 * (s.steps - 1) * n_eval * pos(k, b) for b in blocks) * halves
        overlap_after = (sum(s.steps * n_eval * pos(k, b) for b in blocks) * halves) if s.steps > 1 else 0
        cell(f"3 transfer {label}: held-out stream", setting=k, forwards=n_eval * s.steps * cfgx(k),
             batch=min(bs, n_eval) * cfgx(k), enc_rows=held * n_saes + overlap_after,
             enc_rows_before=held * n_saes + overlap_before,
             host_f64_bytes=held * n_saes * channels * 8 * 2,
             ev_calls=len(blocks) * halves * len(budgets) * n_boot * 2 * s.steps,
             ev_draws_calls=len(blocks) * halves * len(budgets) * 2 * s.steps,
             note=f"{n_saes} SAEs per block and half on {held:,} rows; overlap encodes {overlap_before:,} rows before, "
                  f"{overlap_after:,} after")
    # 5. intervention timing on the base model: plain + blocks x windows, decoded
    s = samplings["base"]
    windows = len(step_windows(s.steps, 4))
    gens = (1 + len(blocks) * windows) * n_timing
    cell("5 intervention timing (base)", setting="base", forwards=gens * s.steps * cfgx("base"),
         batch=min(bs, n_timing) * cfgx("base"), decodes=gens,
         note=f"{1 + len(blocks) * windows} generations of {n_timing} images")

    total = {key: round(sum(c[key] for c in cells), 1) for key in ("before_s", "after_s", "bound_s")}
    total["fixed_s"] = args.fixed_s
    return {"profile": prof.name, "overrides": overrides, "parameters": P, "n_control": n_control, "n_timing": n_timing,
            "budgets": budgets, "blocks": blocks,
            "model_facts": {m: {r: {"unet_tflop": round(v["unet_tflop"], 3), "vae_tflop": round(v["vae_tflop"], 3),
                                    "blocks": v["blocks"]} for r, v in f.items()} for m, f in facts.items()},
            "rates": {**rates, "sae_tokens_per_s_used": sae_rate, "encode_rows_per_s": enc_rows_s,
                      "vae_fp32_img_per_s_512": vae_img_s},
            "assumptions": {k: getattr(args, k) for k in ("vae_fp32_slowdown", "fp32_tflops", "encode_flop_factor",
                                                          "host_f64_gbs", "ev_call_us", "ev_draws_ms", "fixed_s")},
            "cells": cells, "total": total}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="standin")
    ap.add_argument("--overrides", default="{}", help="JSON of profile fields, as the notebook's `overrides`")
    ap.add_argument("--params", default="{}", help="JSON of 04's notebook parameters on top of its defaults")
    ap.add_argument("--blocks", default="", help="comma list (default: the paper's four)")
    ap.add_argument("--vae-fp32-slowdown", type=float, default=2.0,
                    help="assumption: fp32 VAE decode (SDXL's force_upcast) vs the measured fp16 one")
    ap.add_argument("--fp32-tflops", type=float, default=40.0,
                    help="assumption: fp32 GEMM rate of the SAE encodings (the evaluated SAEs are float32)")
    ap.add_argument("--encode-flop-factor", type=float, default=1.5,
                    help="assumption: encoding cost over its encoder GEMM (TopK, sparse decode, sums)")
    ap.add_argument("--host-f64-gbs", type=float, default=2.0,
                    help="assumption (before): GB/s of float64 rows copied to the host and summed there")
    ap.add_argument("--ev-call-us", type=float, default=60.0,
                    help="assumption (before): microseconds per ImageSums.ev(idx) on the host (~70 on 2 busy cores)")
    ap.add_argument("--ev-draws-ms", type=float, default=1.0,
                    help="assumption (after): milliseconds per ImageSums.ev_draws of 1000 resamples (~0.5 on 2 cores)")
    ap.add_argument("--fixed-s", type=float, default=45.0,
                    help="assumption: kernel start, imports, building both stand-ins, loading SAEs, plots")
    ap.add_argument("--json", default=None, help="also write the whole model here")
    args = ap.parse_args(argv)
    out = cost_model(args.profile, json.loads(args.overrides), json.loads(args.params), args)
    print(f"04_evaluate cost model: profile {out['profile']}, parameters {out['parameters']}, "
          f"n_control {out['n_control']}, n_timing {out['n_timing']}, control budgets {out['budgets']}")
    for m, f in out["model_facts"].items():
        for r, v in f.items():
            print(f"  {m} at {r} px: UNet {v['unet_tflop']} TFLOP/image-forward, VAE decode {v['vae_tflop']} TFLOP, "
                  f"blocks {v['blocks']}")
    hdr = f"{'cell':44s} {'UNet fwd':>9s} {'batch':>5s} {'VAE':>5s} {'SAE tok':>10s} {'enc rows':>11s} " \
          f"{'hostGB':>7s} {'bound':>7s} {'before':>7s} {'after':>7s}"
    print(hdr)
    for c in out["cells"]:
        print(f"{c['cell']:44s} {c['unet_image_forwards']:9,d} {c['unet_batch']:5d} {c['vae_decodes']:5d} "
              f"{c['sae_train_tokens']:10,d} {c['sae_encode_rows']:11,d} {c['host_float64_gb_before']:7.1f} "
              f"{c['bound_s']:7.1f} {c['before_s']:7.1f} {c['after_s']:7.1f}")
        if c["note"]:
            print(f"{'':46s}{c['note']}")
    t = out["total"]
    print(f"{'total (cells)':44s} {'':50s} {t['bound_s']:7.1f} {t['before_s']:7.1f} {t['after_s']:7.1f}")
    print(f"+ ~{t['fixed_s']:.0f} s not in the cells (assumption: start, models, plots): before ~{(t['before_s'] + t['fixed_s']) / 60:.1f} min, "
          f"after ~{(t['after_s'] + t['fixed_s']) / 60:.1f} min; the UNet alone (the bound) {t['bound_s'] / 60:.1f} min")
    if args.json:
        from repro.io import provenance, write_json_atomic

        write_json_atomic(args.json, json.loads(json.dumps({**out, "provenance": provenance()}, default=str)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
