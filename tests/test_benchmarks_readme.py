"""benchmarks/README.md is what `benchmarks/readme.py` writes from the result files, and every file
it and benchmarks/investigations.md cite exists (issue #29)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from benchmark_script import load

from repro.io import device_name, provenance

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def readme():
    yield load("readme")
    del sys.modules["benchmarks_readme"]


def test_the_committed_readme_is_what_the_result_files_give(readme):
    assert (BENCHMARKS / "README.md").read_text() == readme.render()
    assert readme.main(["--check"]) == 0


@pytest.mark.parametrize("page", ["README.md", "investigations.md"])
def test_every_file_a_page_cites_exists(readme, page):
    assert readme.missing_citations((BENCHMARKS / page).read_text()) == []


def test_a_missing_cited_file_is_found(readme, tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "here.json").write_text("{}")
    text = ("[kept](results/here.json#rows) [gone](results/sae_fast.json) `results/here.json` `sae_fast.json` "
            "[`gone.log`](results/here.json)\n```bash\npython x.py --out OUT.json\n```\n")
    assert readme.missing_citations(text, base=tmp_path) == ["results/sae_fast.json", "sae_fast.json"]


def test_a_stale_readme_fails_the_check(readme, monkeypatch, capsys):
    monkeypatch.setattr(readme, "render", lambda: "# something else\n")
    assert readme.main(["--check"]) == 1
    assert "python benchmarks/readme.py" in capsys.readouterr().err


def test_the_table_takes_command_device_and_date_from_the_files_provenance(readme):
    doc = {"rows": [], "provenance": provenance()}
    assert readme.command(doc) == readme.shell(sys.orig_argv)
    assert readme.device(doc) == device_name() and readme.date(doc) == doc["provenance"]["created"][:10]
    # what older scripts kept at the top level, and nothing at all
    old = {"argv": ["benchmarks/train_speed.py", "--out", "a b.json"], "device": "cuda", "device_name": "NVIDIA H100",
           "created": "2026-12-06T11:50:35+00:00"}
    assert (readme.command(old), readme.device(old), readme.date(old)) == (
        "python benchmarks/train_speed.py --out 'a b.json'", "NVIDIA H100", "2026-12-06")
    assert (readme.command({"rows": []}), readme.device({}), readme.date({})) == ("not recorded",) * 3


def test_a_console_script_is_shown_by_its_name(readme):
    assert readme.shell(["/venv/bin/python3.12", "/venv/bin/repro", "train", "--steps", "5"]) == "repro train --steps 5"
    assert readme.shell(["/venv/bin/python", "-m", "repro.cli", "collect"]) == "python -m repro.cli collect"


def test_every_headline_file_exists_and_has_a_topic(readme):
    for figure in readme.FIGURES:
        assert (readme.RESULTS / figure.path).exists(), figure.path
        assert figure.topic in readme.TOPICS


def test_a_chapter_kernel_records_its_runners_command(readme, monkeypatch):
    monkeypatch.delenv("REPRO_COMMAND", raising=False)
    assert provenance()["argv"] == list(sys.orig_argv)
    runner = [sys.executable, "-m", "repro.cli", "notebook", "run", "07_claims"]
    monkeypatch.setenv("REPRO_COMMAND", json.dumps(runner))  # what run_notebook exports to the kernel
    assert provenance()["argv"] == runner
    assert readme.shell(runner) == "python -m repro.cli notebook run 07_claims"
    kernel = [sys.executable, "-m", "ipykernel_launcher", "-f", "/tmp/kernel-1.json"]
    assert "not recorded" in readme.shell(kernel)  # older chapter files: no temp file names in the table


def test_a_malformed_repro_command_falls_back_to_this_process(monkeypatch):
    for bad in ("not json", '{"a": 1}', "[1, 2]"):
        monkeypatch.setenv("REPRO_COMMAND", bad)
        assert provenance()["argv"] == list(sys.orig_argv)


def test_the_device_column_names_the_gpu_a_file_gives_before_provenance_s_cpu_fallback(readme):
    """ceiling.py's user part wrote provenance before it started CUDA: provenance named the host CPU
    while the file's own "gpu" field names the H100 it ran on."""
    doc = {"provenance": {"device": "Intel(R) Xeon(R) Processor, 16 CPUs", "argv": ["x"]}, "gpu": "NVIDIA H100 80GB HBM3"}
    assert readme.device(doc) == "NVIDIA H100 80GB HBM3"
    assert readme.device({"provenance": {"device": "AMD EPYC, 2 CPUs"}}) == "AMD EPYC, 2 CPUs"  # a CPU run
    assert readme.device({"machine": {"gpu": "NVIDIA H200"}, "provenance": {"device": "cpu"}}) == "NVIDIA H200"
