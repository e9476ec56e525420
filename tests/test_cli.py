"""The command line: results on stdout, one-line errors on stderr, exit status 2."""

import subprocess
import sys

import pytest

from repro.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "repro.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def _one_line_error(result):
    assert result.returncode == 2, result
    lines = [l for l in result.stderr.strip().splitlines() if l.startswith("repro: error")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_blocks_lists_all_eleven(capsys):
    assert main(["blocks", "--model", "tiny-random"]) == 0
    out = capsys.readouterr().out
    assert out.count("attentions") == 11 and "down_blocks.2.attentions.1" in out


def test_generate_writes_pngs(tmp_path, capsys):
    assert main(["generate", "--model", "tiny-random", "a red circle", "a cat", "--seed", "5", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["000005.png", "000006.png"]


@pytest.mark.parametrize(
    "args, needle",
    [(["blocks", "--model", "/no/such/folder"], "does not exist"),
     (["blocks", "--model", "tiny-random", "--dtype", "float8"], "unknown dtype"),
     (["notebook", "run", "00_overview", "-p", "seed", "3x"], "must be an integer"),
     (["notebook", "run", "00_overview", "--profile", "huge"], "unknown profile"),
     (["notebook", "run", "00_overview", "-p", "nope", "1"], "has no parameter"),
     (["notebook", "run", "99_missing"], "no notebook")],
)
def test_bad_input_is_one_line(args, needle):
    line = _one_line_error(run_cli(*args))
    assert needle in line
