"""Why the toy SAEs barely left their random init: EV, decoder cosine to init and seed stability
against training steps, per Adam lr, for one block of a stored toy collection.

    python benchmarks/investigations/toy_sae_lr.py STORE BLOCK LRS BUDGETS
    python benchmarks/investigations/toy_sae_lr.py artifacts/toy/store down.2.1 1.13e-3,1e-4 250,500,1000,1500,3000

The last 200 images are held out; two SAEs (seeds 0 and 1000, the seed-stability pair) train
per lr, resumed from one budget to the next (k 10, 4 x 128 features, batch 1024, as the toy).
"""
import sys, tempfile, time
import torch
from repro.store import ActivationStore, store_source
from repro.sae import TrainConfig, build_block_saes, train_saes
from repro.sae.sources import TensorSource
from repro.sae.stability import init_cosine, match_features, fired_on
from repro.evaluate.reconstruction import evaluate_reconstruction

torch.set_num_threads(1)
store = ActivationStore(sys.argv[1])
block = sys.argv[2]
lrs = [float(x) for x in sys.argv[3].split(",")]
budgets = [int(x) for x in sys.argv[4].split(",")]
src = store_source(store, 4096, blocks=[block], seed=0, shuffle=False, epochs=1)
x = torch.cat([b[block] for b in src]).float()
n_img = x.shape[0] // 64
train, held = x[: (n_img - 200) * 64], x[(n_img - 200) * 64:]
held_img = held.reshape(200, 8, 8, -1)
for lr in lrs:
    saes = {s: build_block_saes(store, k=10, expansion=4, dead_tokens=200_000, seed=s, blocks=[block])[block] for s in (0, 1000)}
    srcs = {s: TensorSource({block: train}, 1024, seed=s) for s in saes}
    with tempfile.TemporaryDirectory() as work:
        for budget in budgets:
            t = time.time()
            for s, sae in saes.items():
                cfg = TrainConfig(steps=budget, lr=lr, device="cpu", checkpoint_every=budgets[-1] + 1, progress=False,
                                  log_every=budget, geometric_median_samples=32768)
                train_saes({block: sae}, srcs[s], cfg, out_dir=f"{work}/{s}", resume=True, save_final=False)
            a, b = saes[0], saes[1000]
            r = evaluate_reconstruction(a, held_img, n_boot=0)
            st = match_features(a, b, live_a=fired_on(a, held), live_b=fired_on(b, held))
            print(f"{block} lr {lr:g} steps {budget}: EV {r.ev:.3f} dead {r.dead_fraction:.2f} init-cos {init_cosine(a):.2f} "
                  f"matched@0.9 {st.share:.3f} median-best-cos {st.median_best_cosine:.2f} ({time.time()-t:.0f}s)", flush=True)
