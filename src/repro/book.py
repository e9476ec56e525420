"""Build the book: check the chapters are there, write the status page, run jupyter-book,
then copy the chapters' side folders beside their pages and make the figures load lazily."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from repro.errors import ReproError
from repro.io import write_bytes_atomic
from repro.paths import project_root


def toc_chapters(root: Path) -> list[str]:
    """Chapter names listed in `_toc.yml` under book/chapters/ (status excluded)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    names = []
    for part in toc.get("parts", []):
        for chapter in part.get("chapters", []):
            file = chapter.get("file", "")
            if file.startswith("book/chapters/") and not file.endswith("/status"):
                names.append(file.rsplit("/", 1)[-1])
    return names


def write_status_page(root: Path, chapters: list[str]) -> Path:
    """A page saying how each chapter executed, with which parameters, on what machine."""
    import nbformat

    lines = [
        "# Build status",
        "",
        "How each chapter of this build was executed (by `repro notebook run`).",
        "",
        "| chapter | executed | seconds | parameters | machine | commit |",
        "|---|---|---|---|---|---|",
    ]
    for name in chapters:
        path = root / "book" / "chapters" / f"{name}.ipynb"
        meta = nbformat.read(path, as_version=4).metadata.get("repro") if path.exists() else None
        if not meta:
            lines.append(f"| {name} | **not executed** | | | | |")
            continue
        params = ", ".join(f"`{k}={v!r}`" for k, v in meta.get("parameters", {}).items()) or "defaults"
        commit = (meta.get("git_commit") or "")[:10]
        lines.append(
            f"| {name} | {meta.get('finished', '')} | {meta.get('seconds', '')} | {params} | "
            f"{meta.get('machine', '')} | {commit} |"
        )
    out = root / "book" / "chapters" / "status.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out


def _placeholder(root: Path, name: str) -> None:
    """An unexecuted chapter still gets a page, saying how to execute it."""
    import jupytext
    import nbformat

    nb = jupytext.read(root / "notebooks" / f"{name}.md")
    banner = nbformat.v4.new_markdown_cell(
        f"```{{warning}}\nThis chapter has not been executed in this build: run `make chapter NB={name}`.\n```"
    )
    nb.cells.insert(0, banner)
    path = root / "book" / "chapters" / f"{name}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


SIDE_SUFFIX = ".files"


def side_folder(chapter: str, root: Path | None = None) -> Path:
    """Where a chapter writes static files its page loads (feature pages): copied beside the
    built page, so the page reads them by the relative path `<chapter>.files/`."""
    return (root or project_root()) / "book" / "chapters" / f"{chapter}{SIDE_SUFFIX}"


def copy_side_folders(root: Path) -> list[Path]:
    """Copy every chapter's side folder next to its built page; returns the copies."""
    import shutil

    out = []
    html = root / "book" / "_build" / "html" / "book" / "chapters"
    for folder in sorted((root / "book" / "chapters").glob(f"*{SIDE_SUFFIX}")):
        if folder.is_dir():
            target = html / folder.name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(folder, target)
            out.append(target)
    return out


_EAGER_IMG = re.compile(r"<img(?![^>]*\bloading=)", re.IGNORECASE)


def lazy_images(html: Path) -> int:
    """Mark every image of the built pages `loading="lazy"`; returns how many were marked.

    A chapter's figures are fetched when scrolled near, not before its first interaction: the
    feature pages of 05 sit below ~2.6 MB of figures (measured in benchmarks/feature_pages.md).
    """
    marked = 0
    for page in html.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        new, n = _EAGER_IMG.subn('<img loading="lazy"', text)
        if n:
            write_bytes_atomic(page, new.encode("utf-8"))
            marked += n
    return marked


def build_book(root: Path | None = None, strict: bool = False) -> Path:
    """Build book/_build/html from the executed chapters; returns the index page."""
    root = root or project_root()
    chapters = toc_chapters(root)
    missing = [n for n in chapters if not (root / "book" / "chapters" / f"{n}.ipynb").exists()]
    if missing and strict:
        raise ReproError(f"chapters not executed: {', '.join(missing)}; run `make notebooks` first")
    write_status_page(root, chapters)
    for name in missing:
        _placeholder(root, name)
    # jupyter-book has no `python -m jupyter_book`: call its CLI from this interpreter.
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()",
           "build", str(root), "--path-output", str(root / "book"),
           "--config", str(root / "_config.yml"), "--toc", str(root / "_toc.yml")]
    if subprocess.run(cmd, cwd=root).returncode != 0:
        raise ReproError("jupyter-book failed to build the book: see its output above")
    copy_side_folders(root)
    lazy_images(root / "book" / "_build" / "html")
    return root / "book" / "_build" / "html" / "index.html"
