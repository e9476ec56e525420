"""Feature pages at paper scale: write the static files for 4 blocks x 5,120 features with
the library's own writer (synthetic data of the chapter's shapes: 16 top images, a 32-image
sample for the quantile bands, 16x16 heatmaps, 10,000 distinct images), then open a feature
by its link in headless Chromium (network off) and measure the first render time and the
bytes loaded before the first interaction.

    python benchmarks/feature_pages.py --out /tmp/feature-pages [--features 5120] [--json out.json]

An existing page instead (e.g. the built book's chapter, whose theme loads its own assets):

    python benchmarks/feature_pages.py --page book/_build/html/chapters/05_features.html --site SITE_FOLDER

Targets (issue 18): first render <= 2 s, <= 3 MB before the first interaction.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))  # its synthetic data and offline browser, shared with the tests

BLOCKS = ("down.2.1", "mid.0", "up.0.0", "up.0.1")


def write_site(out: Path, n_features: int, n_images: int, seed: int = 0) -> dict:
    from repro.features.site import FeatureSite
    from repro.widgets.pages import write_standalone
    from _synthetic_features import synthetic_blocks, synthetic_image

    started = time.perf_counter()
    blocks = synthetic_blocks(BLOCKS, n_features=n_features, m=16, grid=16, n_images=n_images, sample=32,
                              d_model=1280, labels=True, seed=seed)
    for b, bf in blocks.items():  # icons at three strengths and a painted example for a few features
        for f in bf.live()[:3].tolist():
            bf.icons[f] = {s: synthetic_image(100_000 + f * 3 + i, 512) for i, s in enumerate((0.5, 1.0, 1.5))}
            bf.painted[f] = {"prompt": "a photo", "region": "centre", "plain": synthetic_image(200_000 + f, 512),
                             "edited": synthetic_image(300_000 + f, 512)}
    built = time.perf_counter() - started
    site = FeatureSite(blocks, lambda i: synthetic_image(i, 128), page_size=64, thumb=64)
    sizes = site.write(out)
    page = write_standalone(out, title="Feature pages: paper-scale shapes (synthetic)")
    return {"synthetic_data_s": round(built, 1), "write": sizes, "page": str(page),
            "on_disk_mb": round(sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6, 1)}


def measure(page: Path, link: str, repeats: int = 3) -> dict:
    from _offline_chromium import headless_chromium, offline_page

    runs = []
    with headless_chromium() as browser:
        for _ in range(repeats):
            view = offline_page(browser, 1280, 1400)
            loaded: list[str] = []
            view.page.on("requestfinished", lambda r: loaded.append(r.url))
            started = time.perf_counter()
            view.page.goto(page.as_uri() + link)
            view.page.wait_for_selector(f".repro-fp-card[data-feature='{link.rsplit('/', 1)[1]}'] .repro-fp-hist rect")
            # every quantile band settled: its weakest example's heatmap drawn, or marked empty
            # (a feature that fires in few images has no lower-quantile examples)
            view.page.wait_for_function(
                "() => { const b = [...document.querySelectorAll('.repro-fp-band')];"
                " return b.length > 0 && b.every(e => e.querySelector('canvas[data-drawn=heat], .repro-fb-empty')); }")
            first_render = time.perf_counter() - started
            in_page = view.page.evaluate("performance.now()")
            view.page.wait_for_load_state("networkidle")
            files = {unquote(urlsplit(u).path) for u in loaded if u.startswith("file:")}
            total = sum(Path(f).stat().st_size for f in files if Path(f).is_file())
            runs.append({"first_render_s": round(first_render, 3), "page_clock_ms": round(in_page),
                         "bytes_before_interaction": total, "files": len(files)})
            assert not (view.errors or view.console or view.attempted or view.missing), view
            view.context.close()
    return {"runs": runs, "first_render_s_median": sorted(r["first_render_s"] for r in runs)[len(runs) // 2],
            "mb_before_interaction": round(max(r["bytes_before_interaction"] for r in runs) / 1e6, 3)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="folder for the site (replaced)")
    ap.add_argument("--page", type=Path, help="measure this existing page instead of writing a site")
    ap.add_argument("--site", type=Path, help="with --page: the site folder it loads (picks the feature to open)")
    ap.add_argument("--features", type=int, default=5120, help="features per block")
    ap.add_argument("--images", type=int, default=10_000, help="distinct images the top lists draw from")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--link", default=None, help="with --page: open this feature (#block/feature) instead of the "
                    "last block's middle feature by id")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args(argv)
    from repro.features.site import read_part

    if args.page:
        if not (args.site and args.page.is_file()):
            ap.error("--page needs an existing page and --site, the folder of the site it loads")
        manifest = read_part(args.site, "manifest")
        block = list(manifest["blocks"])[-1]
        ids = read_part(args.site, f"{block}/index")["ids"]
        figures = {"page": str(args.page.resolve()), "site": str(args.site), "link": args.link or f"#{block}/{ids[len(ids) // 2]}",
                   "site_on_disk_mb": round(sum(p.stat().st_size for p in args.site.rglob("*") if p.is_file()) / 1e6, 2)}
    else:
        if not args.out:
            ap.error("give --out (write a paper-scale site) or --page and --site (measure an existing page)")
        figures = {"features_per_block": args.features, "blocks": len(BLOCKS)}
        figures.update(write_site(args.out, args.features, args.images))
        f = read_part(args.out, "up.0.1/index")["ids"][len(BLOCKS) * 100 % args.features // 2]
        figures["link"] = f"#up.0.1/{f}"
    figures.update(measure(Path(figures["page"]), figures["link"], args.repeats))
    print(json.dumps(figures, indent=1))
    if args.json:
        from repro.io import provenance, write_json_atomic

        write_json_atomic(args.json, {**figures, "provenance": provenance()})


if __name__ == "__main__":
    main()
