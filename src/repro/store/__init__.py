"""The activation store: block updates of many generated images, sharded on disk.

Layout of a store folder:

    STORE/
      manifest.json            written last, atomically, after every shard
      shards/shard-000000.safetensors
      shards/shard-000001.safetensors
      ...
      .lock                    held (flock) by the collection writing to the store

Shard `i` holds prompts [i*S, min((i+1)*S, N)) (S = `shard_size`, fixed by global index so
that a resumed collection rebuilds exactly the same shards). Its tensors:

    <block>    [n, steps, halves, H*W, C]  store dtype (bf16/fp16/fp32); one per block,
               named by its short name (`down.2.1`); halves = (uncond, cond) under
               guidance, else (all,); position p = row*W + col
    latents    [n, 4, h, w] float32        final latents (decode only what is looked at)
    seeds      [n] int64                   seed of each image (= seed + global index)
    images     [n, H, W, 3] uint8          only with `store_images` (small toy images)

and safetensors metadata {"repro": JSON {"prompts": [...], "start", "stop"}} (one key, so
that identical shards are identical bytes). A token is one
(image, step, half, position) vector of C channels.

manifest.json: `settings` (what an append must match: model, blocks, steps, guidance,
resolution, dtype, compute dtype, shard and batch size, seed, prompt kind, store_images,
format version), `info` (per-block shapes, halves, latent shape, prompt source), `shards`
(per shard: file, prompt range, bytes, sha256, sha256 of its prompts, count of non-finite
values per block), `n_prompts`, `complete`, and `provenance` (package, git commit, host).

Size: bytes per image = sum over blocks of steps*halves*H*W*C*2 (bf16); the paper's
1.5M prompts x 4 blocks x 256 x 1280 at 1 step is ~4 TB in bf16 (2.6 MB per image):
everything streams shard by shard, nothing loads the whole store.

Modules: `layout` (names, dtypes, tensor layout), `checks` (what a manifest and a shard
must be), `writer` (StoreWriter), `shards` (reading shard files), `activation_store`
(ActivationStore: manifest, per-image reads, verification), `chunks` and `source` (token
batches for training).
"""

from repro.store.layout import DTYPES, MANIFEST, shard_file
from repro.store.activation_store import ActivationStore
from repro.store.source import StoreSource, store_source
from repro.store.writer import StoreWriter

__all__ = ["DTYPES", "MANIFEST", "ActivationStore", "StoreSource", "StoreWriter", "shard_file", "store_source"]
