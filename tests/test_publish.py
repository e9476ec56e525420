"""`make publish`: the built site becomes the whole gh-pages branch of a remote; a second publish replaces it.

Runs the real Makefile target and ghp-import in a throw-away git repository whose `origin` is a
local bare repository (never this checkout's git state, never a network remote).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)  # the venv running the tests: its ghp-import (a dependency) and install stamp

pytestmark = pytest.mark.skipif(shutil.which("git") is None or shutil.which("make") is None,
                                reason="needs git and make")


def _git(cwd, *args):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def checkout(tmp_path):
    """A git repository with this Makefile and an `origin` that is a bare repository beside it."""
    bare, work = tmp_path / "remote.git", tmp_path / "work"
    _git(tmp_path, "init", "--bare", "-q", str(bare))
    work.mkdir()
    _git(work, "init", "-q", "-b", "main")
    shutil.copy2(ROOT / "Makefile", work / "Makefile")
    _git(work, "add", "Makefile")
    _git(work, "commit", "-q", "-m", "init")
    _git(work, "remote", "add", "origin", str(bare))
    return work, bare


def _site(folder, chapters):
    """A minimal built book: index, chapter pages, static files, the feature site."""
    files = {"index.html": "<h1>book</h1>", "_static/style.css": "body{}",
             "features/index.html": "<div id=features></div>", "features/data/down.2.1.json": "{}"}
    files.update({f"chapters/{c}.html": f"<p>{c}</p>" for c in chapters})
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return set(files)


def _publish(work, site):
    # -o: the venv's install stamp is taken as up to date (no pip run from the test).
    stamp = VENV / ".repro-installed"
    return subprocess.run(["make", "-s", "-f", str(work / "Makefile"), "-o", str(stamp), "publish",
                           f"VENV={VENV}", f"SITE={site}"],
                          cwd=work, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"})


def _branch_files(bare):
    listing = _git(bare, "ls-tree", "-r", "--name-only", "gh-pages")
    return set(listing.split())


def test_publish_pushes_exactly_the_site_and_replaces_it(tmp_path, checkout):
    work, bare = checkout
    site = tmp_path / "html"
    first = _site(site, ["00_overview", "01_shapesworld"])
    run = _publish(work, site)
    assert run.returncode == 0, run.stderr
    # exactly the site, plus the .nojekyll marker that makes GitHub Pages serve _static/
    assert _branch_files(bare) == first | {".nojekyll"}
    assert _git(bare, "show", "gh-pages:chapters/00_overview.html") == "<p>00_overview</p>"

    shutil.rmtree(site)
    second = _site(site, ["02_collect"])
    run = _publish(work, site)
    assert run.returncode == 0, run.stderr
    assert _branch_files(bare) == second | {".nojekyll"}  # old chapters gone
    assert "chapters/00_overview.html" not in _branch_files(bare)
    # the checkout's own branch is untouched
    assert _git(work, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
    assert _git(work, "ls-tree", "-r", "--name-only", "main").split() == ["Makefile"]


def test_publish_without_a_built_book_says_so(tmp_path, checkout):
    work, bare = checkout
    run = _publish(work, tmp_path / "nothing")
    assert run.returncode == 2
    assert run.stdout.strip().splitlines() == [
        f"no built book in {tmp_path / 'nothing'}: run make reproduce (or make book) first"]
    assert _git(bare, "branch", "--list").strip() == ""  # nothing pushed
