"""Exact TopK variants on [B, n] bf16 rows (issue #17: TopK is the SAE step's largest cost), timed and checked.

For each n (5,120 / 20,480 / 81,920) and k (10: the SAE's TopK on pre-activations; 256: AuxK's,
on pre-activations with 90% of the latents masked to 0, and on unmasked rows) it times:

* torch_sorted, torch_unsorted: torch.topk;
* sort: torch.sort, first k (exact, for scale);
* two_stage_s{S}: rows as chunks of S, torch.topk within each chunk, then over the candidates;
* group_max_s{S}: `repro.sae.fused.topk_chunked`: rows as n / S strided groups of S, the k groups
  with the largest maxima, then the TopK of their k S elements; fused_rule: `fused.topk` (the
  group size `fused.topk_chunk` picks, or torch.topk).

Each variant's values are checked against torch.topk (exactly; unsorted ones after sorting) and its
indices for pointing at them, distinct, and as the same set as torch.topk's where a row has no tie
at its k-th value. Times are GPU times of `--reps` calls captured in one CUDA graph and replayed
(eager between events where capture fails, or on the CPU), reported as ms per call and as the
tokens/s a step made of this TopK alone would reach (B / time).

    python benchmarks/topk_speed.py --out topk.json                 # H200: < 60 s
    python benchmarks/topk_speed.py --out topk.json --cpu-dry-run   # tiny, on the CPU
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from repro.sae import fused


def two_stage(x: torch.Tensor, k: int, s: int, sorted: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, n] -> the row's TopK from the per-chunk TopKs of n / s chunks of s (s >= k, s divides n)."""
    B, n = x.shape
    v, i = x.view(B, n // s, s).topk(k, dim=-1, sorted=False)  # [B, n / s, k]
    i = i.add(torch.arange(0, n, s, device=x.device).unsqueeze(-1)).view(B, -1)  # global indices [B, n k / s]
    vals, pos = v.view(B, -1).topk(k, dim=-1, sorted=sorted)
    return vals, i.gather(1, pos)


def variants(n: int, k: int) -> dict:
    """name -> (fn(x) -> (values, indices), values sorted?) for rows of n."""
    out = {
        "torch_sorted": (lambda x: x.topk(k, dim=-1), True),
        "torch_unsorted": (lambda x: x.topk(k, dim=-1, sorted=False), False),
        "sort": (lambda x: tuple(t[:, :k] for t in x.sort(dim=-1, descending=True)), True),
    }
    for s in (256, 1024, 4096):
        if k <= s < n and n % s == 0:
            out[f"two_stage_s{s}"] = ((lambda x, s=s: two_stage(x, k, s)), True)
    for s in (4, 8, 16, 20, 32, 40, 64, 80, 128, 256):
        if n % s == 0 and n // s >= k and n // s + k * s < n:
            out[f"group_max_s{s}"] = ((lambda x, s=s: fused.topk_chunked(x, k, s)), True)
            out[f"group_max_s{s}_unsorted"] = ((lambda x, s=s: fused.topk_chunked(x, k, s, sorted=False)), False)
    out["fused_rule"] = ((lambda x: fused.topk(x, k)), True)
    return out


def check(x: torch.Tensor, k: int, vals: torch.Tensor, idx: torch.Tensor, is_sorted: bool) -> dict:
    """Values against torch.topk, indices for validity and (on rows without a tie at the k-th value) set equality."""
    ref_v, ref_i = x.topk(k, dim=-1)
    v = vals if is_sorted else vals.sort(dim=-1, descending=True).values
    values_exact = bool(torch.equal(v, ref_v))
    points = bool(torch.equal(x.gather(1, idx).sort(-1).values, vals.sort(-1).values))
    distinct = bool((idx.sort(-1).values.diff(dim=-1) > 0).all())
    kth = ref_v[:, -1:]
    untied = (x == kth).sum(-1) == 1  # the k-th value occurs once: the index set is determined
    same = (idx.sort(-1).values == ref_i.sort(-1).values).all(-1)
    return {"values_exact": values_exact, "indices_point_at_values": points, "indices_distinct": distinct,
            "index_sets_equal_untied_rows": float(same[untied].float().mean()) if untied.any() else None,
            "untied_rows": float(untied.float().mean()), "exact": values_exact and points and distinct
            and bool(same[untied].all())}


def time_ms(fn, x: torch.Tensor, reps: int) -> tuple[float, bool]:
    """Milliseconds per call: `reps` calls in one CUDA graph, replayed (eager where capture fails or on CPU)."""
    if x.is_cuda:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn(x)
        torch.cuda.current_stream().wait_stream(side)
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(reps):
                    fn(x)
            g.replay()
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            g.replay()
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end) / reps
            del g
            return ms, True
        except RuntimeError:
            torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn(x)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / reps, False
    fn(x)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return 1e3 * (time.perf_counter() - t0) / reps, False


def rows(batch: int, n: int, kind: str, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    """[batch, n] bf16: random pre-activations, or ("masked") with a random 90% of the latents set to 0 as AuxK sees them."""
    x = torch.randn(batch, n, generator=gen, device=device).to(torch.bfloat16)
    if kind == "masked":
        x *= (torch.rand(n, generator=gen, device=device) < 0.1).to(x.dtype)
    return x


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON written here")
    p.add_argument("--n", type=int, nargs="+", default=[5120, 20480, 81920])
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on the CPU, to see that it runs")
    args = p.parse_args(argv)
    if args.cpu_dry_run:
        device, sizes, batch, reps, cases = torch.device("cpu"), [512, 2048], 32, 2, [(10, "dense"), (64, "masked")]
    else:
        device, sizes, batch, reps = torch.device("cuda"), args.n, args.batch, args.reps
        cases = [(10, "dense"), (256, "masked"), (256, "dense")]
    gen = torch.Generator(device=device).manual_seed(0)
    t_start = time.perf_counter()
    results = []
    for n in sizes:
        for k, kind in cases:
            x = rows(batch, n, kind, device, gen)
            base = None
            for name, (fn, is_sorted) in variants(n, k).items():
                row = {"n": n, "k": k, "input": kind, "variant": name, "sorted": is_sorted}
                try:
                    row.update(check(x, k, *fn(x), is_sorted))
                    ms, graphed = time_ms(fn, x, reps)
                except (RuntimeError, ValueError) as err:  # report, go on with the others
                    row["error"] = f"{type(err).__name__}: {err}"[:300]
                    results.append(row)
                    continue
                base = ms if name == "torch_sorted" else base
                row.update({"ms": round(ms, 4), "tokens_per_s": batch / ms * 1e3, "graphed": graphed,
                            "speedup_vs_torch_sorted": round(base / ms, 3) if base else None})
                if name == "fused_rule":
                    row["chunk"] = fused.topk_chunk(n, k)
                results.append(row)
                print(f"n={n:6d} k={k:3d} {kind:6s} {name:24s} {row['ms']:8.3f} ms  exact={row['exact']}", flush=True)
            del x
    report = {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "batch": batch, "reps": reps, "results": results,
              "seconds": round(time.perf_counter() - t_start, 1)}
    from repro.io import provenance, write_json_atomic

    write_json_atomic(args.out, {**report, "provenance": provenance()})
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
