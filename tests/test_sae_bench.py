"""benchmarks/sae_speed.py runs on CPU at tiny sizes and writes its JSON report."""

import json

import torch
from benchmark_script import load


def test_benchmark_runs_on_cpu_and_writes_json(tmp_path):
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "speed.json"
        for impl in ("fast", "reference"):
            argv = ["--device", "cpu", "--d-model", "16", "--n-features", "64", "128", "--k", "4", "--k-aux", "8"]
            argv += ["--batch-size", "32", "--steps", "3", "--warmup", "1", "--impl", impl, "--out", str(out)]
            report = load("sae_speed").main(argv)
            saved = json.loads(out.read_text())
            assert saved["config"]["impl"] == impl and saved["device"] == "cpu"
            assert [r["n_features"] for r in saved["results"]] == [64, 128]
            assert all(r["tokens_per_s"] > 0 and r["dead_latents"] > 0 for r in report["results"])
    finally:
        torch.set_num_threads(n_threads)
