"""Prompt sources: files, generators, seeds, and the errors users see."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from repro.errors import ReproError
from repro.prompts import generator_names, open_prompts, prompts_digest, register_generator, seeds_for


def test_text_file_one_prompt_a_line(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a cat\n\n  a dog  \nа ёж\n", encoding="utf-8")
    src = open_prompts(f)
    assert src.length == 3
    assert src.get(0, 3) == ["a cat", "a dog", "а ёж"]
    assert src.get(1, 2) == ["a dog"]
    assert src.describe()["kind"] == "text"


def test_jsonl_and_parquet_columns(tmp_path):
    j = tmp_path / "p.jsonl"
    j.write_text("\n".join(json.dumps({"prompt": f"p{i}", "caption": f"c{i}"}) for i in range(4)) + "\n")
    assert open_prompts(j).get(0, 4) == ["p0", "p1", "p2", "p3"]
    assert open_prompts(j, column="caption").get(2, 3) == ["c2"]
    with pytest.raises(ReproError, match="'nope'"):
        open_prompts(j, column="nope")
    q = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["x", "y"], "n": [1, 2]}), q)
    assert open_prompts(q).get(0, 2) == ["x", "y"]
    with pytest.raises(ReproError, match="column"):
        open_prompts(q, column="caption")


@pytest.mark.parametrize("content", [b"", b"\n  \n"])
def test_empty_prompt_file_is_one_clear_error(tmp_path, content):
    f = tmp_path / "empty.txt"
    f.write_bytes(content)
    with pytest.raises(ReproError, match="holds no prompts"):
        open_prompts(f)


def test_unreadable_or_missing_prompt_file(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa not utf-8")
    with pytest.raises(ReproError, match="cannot read prompt file"):
        open_prompts(bad)
    with pytest.raises(ReproError, match="neither a file nor a generator"):
        open_prompts(tmp_path / "missing.txt")
    with pytest.raises(ReproError, match="folder"):
        open_prompts(tmp_path)
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    with pytest.raises(ReproError, match="cannot read prompt file"):
        open_prompts(broken)
    js = tmp_path / "broken.jsonl"
    js.write_text('{"prompt": "ok"}\n{oops\n')
    with pytest.raises(ReproError, match="line 2"):
        open_prompts(js)


def test_hf_dataset_without_datasets_says_what_to_do(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed ([interop] brings it)
    with pytest.raises(ReproError, match="pip install datasets"):
        open_prompts("hf:laion/coco")


def test_shapes_generator_is_a_pure_function_of_index():
    assert "shapes" in generator_names()
    src = open_prompts("shapes", seed=3)
    assert src.length is None
    assert src.get(3, 6) == src.get(0, 6)[3:]
    assert open_prompts("shapes", seed=3).get(0, 4) == src.get(0, 4)
    assert open_prompts("shapes", seed=4).get(0, 4) != src.get(0, 4)


def test_registered_generator_and_seeds():
    register_generator("counting", lambda i, seed: f"{seed}-{i}")
    assert open_prompts("counting", seed=7).get(2, 4) == ["7-2", "7-3"]
    assert seeds_for(5, 8, base_seed=100) == [105, 106, 107]
    assert prompts_digest(["a"]) != prompts_digest(["b"])


def test_asking_past_the_end_of_a_file(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a\nb\n")
    with pytest.raises(ReproError, match="holds only 2"):
        open_prompts(f).get(0, 3)
    with pytest.raises(ReproError, match="empty"):
        open_prompts([])
