"""Batch sources: where SAE training batches come from, and how a run resumes mid-stream.

The protocol (`BatchSource`) that every source follows (the activation store and the
streaming generator included):

* Iterating yields batches: dicts `{block_name: Tensor[B, d]}`, one entry per block, all
  with the same B (row i of every block comes from the same image position). Any float
  dtype and device; the trainer casts to float32 and moves to its device. Iteration may
  be endless (cycling over epochs) or end, which ends training early.
* `state_dict()` -> dict describing the position *after the last batch yielded*;
  `load_state_dict(state)` restores it, so that the next `iter(source)` yields exactly
  the batch that would have come next. A state holds only tensors, numbers, strings,
  bools, None, lists and dicts (checkpoints load it with `torch.load(weights_only=True)`).
  Iterating again without `load_state_dict` continues from the current position.
* Optional: `blocks` (the block names it yields) and `describe()` -> a short dict
  saved into each SAE's cfg.json as the training-data description.

`TensorSource` is the in-memory source for tests and small runs: a dict of [N, d]
tensors, shuffled per epoch with a permutation seeded by (seed, epoch), so that the
batches are a deterministic function of seed and position.
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol, runtime_checkable

import torch

from repro.errors import ReproError

Batch = dict[str, torch.Tensor]


@runtime_checkable
class BatchSource(Protocol):
    """An iterable of `{block_name: Tensor[B, d]}` batches whose position can be saved and restored."""

    def __iter__(self) -> Iterator[Batch]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TensorSource:
    """In-memory source over `tensors` {block: [N, d]}; batches of `batch_size` rows, reshuffled each epoch.

    Rows are aligned across blocks (the same permutation for all). The last partial
    batch of an epoch is dropped. `epochs=None` cycles forever.
    """

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        epochs: int | None = None,
    ):
        if not tensors:
            raise ReproError("TensorSource needs at least one block of activations")
        sizes = {name: t.shape[0] for name, t in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ReproError(f"TensorSource blocks must hold the same number of rows, got {sizes}")
        for name, t in tensors.items():
            if t.ndim != 2:
                raise ReproError(f"TensorSource block {name!r} must be [N, d], got shape {tuple(t.shape)}")
        self.tensors = tensors
        self.n_rows = next(iter(sizes.values()))
        if not 1 <= batch_size <= self.n_rows:
            raise ReproError(f"batch_size must be in 1..{self.n_rows} (rows available), got {batch_size}")
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epochs = epochs
        self.epoch = 0
        self.batch_in_epoch = 0

    @property
    def blocks(self) -> list[str]:
        return list(self.tensors)

    @property
    def batches_per_epoch(self) -> int:
        return self.n_rows // self.batch_size

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n_rows)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_rows, generator=gen)

    def __iter__(self) -> Iterator[Batch]:
        device = next(iter(self.tensors.values())).device
        while self.epochs is None or self.epoch < self.epochs:
            # the permutation lives beside the rows: a GPU tensor gathers with a device index,
            # so no batch waits on a host-to-device copy of its indices
            order = self._order(self.epoch).to(device)
            while self.batch_in_epoch < self.batches_per_epoch:
                start = self.batch_in_epoch * self.batch_size
                rows = order[start : start + self.batch_size]
                # Advance before yielding: state_dict() taken after a batch points past it.
                self.batch_in_epoch += 1
                yield {name: t[rows] for name, t in self.tensors.items()}
            self.epoch += 1
            self.batch_in_epoch = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ReproError(
                f"source state was saved with seed {state['seed']} but this TensorSource has seed {self.seed}: "
                "resume with the same seed"
            )
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])

    def describe(self) -> dict[str, Any]:
        return {"source": "TensorSource", "rows": self.n_rows, "batch_size": self.batch_size, "seed": self.seed}


class _PartsState:
    """The state of a source made of parts (`self.sources`): every part's, in order."""

    same_parts = "the same parts"  # what a resume must keep, said when a saved state does not fit

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [s.state_dict() for s in self.sources]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state.get("parts", [])) != len(self.sources):
            raise ReproError(f"the saved state holds {len(state.get('parts', []))} parts but this "
                             f"{type(self).__name__} has {len(self.sources)}: resume with {self.same_parts}")
        for source, part in zip(self.sources, state["parts"]):
            source.load_state_dict(part)


class ZipSource(_PartsState):
    """Several sources as one: each batch is one batch of every part, merged (the parts' blocks differ).

    For blocks whose rows cannot be aligned (maps of different sizes): every SAE still sees
    its own block's batches in its own part's order, from one command and one checkpoint.
    The state is every part's; iteration ends when any part ends. Parts share a batch size.
    """

    same_parts = "the same blocks"

    def __init__(self, sources):
        self.sources = list(sources)
        if not self.sources:
            raise ReproError("ZipSource needs at least one source")
        blocks = [b for s in self.sources for b in s.blocks]
        if len(set(blocks)) != len(blocks):
            raise ReproError(f"the sources of a ZipSource share blocks ({blocks}): give each block to one source")
        sizes = {int(s.batch_size) for s in self.sources}
        if len(sizes) != 1:
            raise ReproError(f"the sources of a ZipSource have different batch sizes {sorted(sizes)}: use one")
        self.batch_size = sizes.pop()

    @property
    def blocks(self) -> list[str]:
        return [b for s in self.sources for b in s.blocks]

    def __iter__(self) -> Iterator[Batch]:
        parts = [iter(s) for s in self.sources]
        while True:
            merged: Batch = {}
            for part in parts:
                batch = next(part, None)
                if batch is None:
                    return
                merged.update(batch)
            yield merged

    def describe(self) -> dict[str, Any]:
        first = self.sources[0].describe() if hasattr(self.sources[0], "describe") else {}
        return {**first, "groups": [list(s.blocks) for s in self.sources]}


class ConcatSource(_PartsState):
    """Several sources of the same blocks as one: each batch is one batch of every part, rows one
    part after another ({block: [sum of the parts' B, d]}).

    What one process reads to see the global batches of a stream split over ranks (each
    rank reading one part, `repro.store.store_source(ranks=W)`). The state is every
    part's; iteration ends when any part ends.
    """

    same_parts = "the same number of ranks"

    def __init__(self, sources):
        self.sources = list(sources)
        if not self.sources:
            raise ReproError("ConcatSource needs at least one source")
        if len({tuple(s.blocks) for s in self.sources}) != 1:
            raise ReproError(f"the sources of a ConcatSource yield different blocks "
                             f"{[list(s.blocks) for s in self.sources]}: give every part the same blocks")
        self.batch_size = sum(int(s.batch_size) for s in self.sources)

    @property
    def blocks(self) -> list[str]:
        return list(self.sources[0].blocks)

    def __iter__(self) -> Iterator[Batch]:
        parts = [iter(s) for s in self.sources]
        while True:
            batches = [next(part, None) for part in parts]
            if any(b is None for b in batches):
                return
            yield {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


    def describe(self) -> dict[str, Any]:
        first = self.sources[0].describe() if hasattr(self.sources[0], "describe") else {}
        return {**first, "batch_size": self.batch_size, "ranks": len(self.sources)}
