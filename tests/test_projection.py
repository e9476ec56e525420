"""The paper-scale projection of issue #17 adds up its stages from the committed measurements."""

from __future__ import annotations

import pytest
from benchmark_script import load


@pytest.fixture(scope="module")
def projection():
    return load("projection")


def test_the_store_path_is_the_sum_of_its_stages(projection):
    r = projection.rates()
    h = projection.project(r)["hours"]
    assert h["training"] == max(h["training_steps"], h["training_read"])
    assert h["total_store_path"] == pytest.approx(h["collection"] + h["training"] + h["analysis"] + h["riebench"])
    assert h["floor"] == pytest.approx(h["unet_pass"] + h["store_disk_pass"])
    assert h["floor_with_riebench"] == pytest.approx(h["floor"] + h["riebench"])
    assert h["unet_pass"] == pytest.approx(1.5e6 / r["bare_unet_images_per_s"] / 3600)


def test_hours_scale_inversely_with_the_rates(projection):
    r = projection.rates()
    faster = dict(r, collect_images_per_s_steady=2 * r["collect_images_per_s_steady"],
                  analysis_tokens_per_s_cold=4 * r["analysis_tokens_per_s_cold"])
    a, b = projection.project(r)["hours"], projection.project(faster)["hours"]
    assert b["collection"] == pytest.approx(a["collection"] / 2)
    assert b["analysis"] == pytest.approx(a["analysis"] / 4)
    assert "total, store path" in projection.markdown(r, projection.project(r))


def test_one_gpu_ceiling_call_gives_the_same_projection_as_the_committed_files(projection, tmp_path, monkeypatch):
    import json
    import shutil

    before = projection.project(projection.rates())["hours"]
    run = tmp_path / "out"
    run.mkdir()
    for name, file in projection.RUN_FILES.items():  # the committed files under gpu_ceiling.sh's names
        shutil.copy(projection.RESULTS / projection.SOURCES[name], run / file)
    monkeypatch.setattr(projection, "SOURCES", dict(projection.SOURCES))
    projection.use_run(run)
    assert projection.project(projection.rates())["hours"] == before
    unet = json.loads((run / "unet.json").read_text())
    unet["best"]["images_per_s"] *= 2  # and it does read the run's files
    (run / "unet.json").write_text(json.dumps(unet))
    assert projection.project(projection.rates())["hours"]["unet_pass"] == pytest.approx(before["unet_pass"] / 2)
