"""Pack a written feature site (`05_features`' side folder) to bring back from a device call.

    python benchmarks/site_pack.py SITE OUTDIR [--limit-mib 56] [--part-mib 14]

Writes OUTDIR/site.tar.xz.part-00, -01, ... (each <= --part-mib; a device call brings back
at most 8 files of 16 MiB) holding the site under `site/` with `listing.json` (every file of
the full site and its size) and a standalone `site/index.html` (the widget's page, as
`benchmarks/feature_pages.py` opens it), and OUTDIR/site_pack.json (what was packed).

The whole site goes when its archive fits in --limit-mib. Otherwise only what opening one
feature by its link loads, and more: the manifest, every block's index and RIEBench part, and every page file
of the block that `feature_pages.py --page ... --site ...` opens (the manifest's last block;
its link is that block's middle live feature), with every image those pages reference and
that block's icons and painted examples. The listing still covers the whole site.

Unpack and measure here (Chromium):  cat site.tar.xz.part-* | tar -xJ -C /tmp/standin-site
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _tar_xz(site: Path, files: list[Path], extra: dict[str, bytes], target: Path) -> None:
    """site/<relative path> for every file plus the `extra` members, xz-compressed (xz -T0 when there)."""
    staging = target.with_suffix(".list")
    if shutil.which("xz") and shutil.which("tar"):
        tmp = target.parent / "site-extra"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "site").mkdir(parents=True)
        for name, data in extra.items():
            (tmp / "site" / name).write_bytes(data)
        staging.write_text("".join(f"site/{f.relative_to(site)}\n" for f in files))
        # the site folder is read through a "site" link so members are named site/...
        link = target.parent / "site-link"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.mkdir()
        os.symlink(site.resolve(), link / "site")
        with open(target, "wb") as fh:
            tar1 = subprocess.run(["tar", "-c", "-h", "-C", str(link), "-T", str(staging), "-C", str(tmp), "site"],
                                  stdout=subprocess.PIPE, check=True).stdout
            fh.write(subprocess.run(["xz", "-T0", "-6", "-c"], input=tar1, stdout=subprocess.PIPE, check=True).stdout)
        shutil.rmtree(tmp)
        shutil.rmtree(link)
        staging.unlink()
    else:
        with tarfile.open(target, "w:xz") as tar:
            for f in files:
                tar.add(f, arcname=f"site/{f.relative_to(site)}")
            for name, data in extra.items():
                info = tarfile.TarInfo(f"site/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _split(archive: Path, part_bytes: int) -> list[Path]:
    parts = []
    with open(archive, "rb") as fh:
        while chunk := fh.read(part_bytes):
            part = archive.with_name(f"{archive.name}.part-{len(parts):02d}")
            part.write_bytes(chunk)
            parts.append(part)
    archive.unlink()
    return parts


def subset(site: Path) -> tuple[list[Path], dict]:
    """What the link of `feature_pages.py --page` and its block's pages need (see the module doc)."""
    from repro.features.site import read_part

    manifest = read_part(site, "manifest")
    block = list(manifest["blocks"])[-1]
    ids = read_part(site, f"{block}/index")["ids"]
    link = f"#{block}/{ids[len(ids) // 2]}"
    files = {p for p in site.glob("manifest.*")} | {p for p in site.glob("*/index.*")} | {p for p in site.glob("*/riebench.*")}
    pages = sorted((site / block).glob("p*.*"))
    files |= set(pages)
    for sub in ("icon", "paint"):
        files |= {p for p in (site / block / sub).rglob("*") if p.is_file()} if (site / block / sub).is_dir() else set()
    text = "".join(p.read_text(errors="replace") for p in pages)
    # image files are img/<id>.<format> and the pages hold the ids: keep every image whose id
    # appears as a number in them (a superset of what they show)
    numbers = {int(n) for n in re.findall(r"(?<![\w.])\d+(?![\w.])", text)}
    images = [p for p in (site / "img").iterdir() if p.stem.isdigit() and int(p.stem) in numbers] if (site / "img").is_dir() else []
    files |= set(images)
    return sorted(files), {"block": block, "link": link, "page_files": len(pages), "images": len(images)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--limit-mib", type=float, default=56)
    ap.add_argument("--part-mib", type=float, default=14)
    ap.add_argument("--title", default="standin: SAE features (05_features)")
    args = ap.parse_args(argv)
    from repro.io import provenance, write_json_atomic
    from repro.widgets.pages import write_standalone

    started = time.perf_counter()
    site, out = args.site.resolve(), args.out
    out.mkdir(parents=True, exist_ok=True)
    everything = sorted(p for p in site.rglob("*") if p.is_file() and p.name != "index.html")
    listing = {str(p.relative_to(site)): p.stat().st_size for p in everything}
    had_page = (site / "index.html").exists()
    page = write_standalone(site, title=args.title)  # the page feature_pages.py opens (index.html)
    extra = {"listing.json": json.dumps(listing, indent=0).encode(), "index.html": Path(page).read_bytes()}
    if not had_page:  # leave the chapter's side folder as the chapter wrote it
        Path(page).unlink()
    record = {"site": str(args.site), "files": len(listing), "bytes": sum(listing.values()),
              "json_bytes": sum(v for k, v in listing.items() if not k.startswith("img/") and "/icon/" not in k and "/paint/" not in k),
              "image_files": sum(1 for k in listing if k.startswith("img/"))}
    archive = out / "site.tar.xz"
    _tar_xz(site, everything, extra, archive)
    record["whole_site_xz_bytes"] = archive.stat().st_size
    if archive.stat().st_size <= args.limit_mib * 2**20:
        record["packed"] = "whole site"
    else:
        files, what = subset(site)
        _tar_xz(site, files, extra, archive)
        record.update(packed="subset", subset=what, subset_files=len(files), subset_bytes=sum(f.stat().st_size for f in files),
                      subset_xz_bytes=archive.stat().st_size)
    record["parts"] = [p.name for p in _split(archive, int(args.part_mib * 2**20))]
    record["seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(out / "site_pack.json", {**record, "provenance": provenance()})
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
