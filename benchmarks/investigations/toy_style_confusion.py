"""Which styles the ShapesWorld 1-step model draws, against the caption's: the oracle's style
reading for N held-out captions at 1 and 4 steps.

    python benchmarks/investigations/toy_style_confusion.py [MODEL] [N]      # default shapes-turbo, 200
"""

from __future__ import annotations

import collections
import json
import sys


def main() -> None:
    from repro.generate import Sampling, generate
    from repro.models.loading import load_pipeline
    from repro.shapes.oracle import load_oracle
    from repro.shapes.scoring import heldout_captions

    model = sys.argv[1] if len(sys.argv) > 1 else "shapes-turbo"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    pipe = load_pipeline(model, device="auto")
    oracle = load_oracle(device=pipe.device)
    scenes, captions = heldout_captions(n, one_stream=True)
    for steps in (1, 4):
        reads = oracle.read(generate(pipe, captions, list(range(n)), Sampling(steps=steps, guidance=0.0)))
        counts = collections.Counter(f"{s.style} -> {r['style']}" for s, r in zip(scenes, reads))
        print(json.dumps({"model": model, "steps": steps, "n": n, "asked -> drawn": dict(sorted(counts.items()))}))


if __name__ == "__main__":
    main()
