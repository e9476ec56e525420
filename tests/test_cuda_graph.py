"""`repro.cuda_graph`: the stream order and the copy-in / replay / outputs of one CUDA-graph replay.

On the CPU a stand-in `torch.cuda` (streams, graphs) logs what the code asks of it, so the order
of waits, stream switches, captures and replays is checked without a GPU; the CUDA test compares
`TrainStep`'s replayed steps with its eager ones (run on a GPU: `pytest tests/test_cuda_graph.py`).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from repro.cuda_graph import GraphedCall, side_stream
from repro.toymodels.engine import WARMUP_STEPS, TrainStep


class FakeStream:
    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def wait_stream(self, other: FakeStream) -> None:
        self.log.append(("wait", self.name, other.name))


class FakeCuda:
    """Streams and graphs that log `(event, ...)`; a capture runs its block (on the CPU), a replay only logs."""

    def __init__(self, monkeypatch):
        self.log: list[tuple] = []
        self.streams = [FakeStream("default", self.log)]  # the current stream last
        self.created = {"side": 0, "g": 0}
        for name in ("Stream", "current_stream", "stream", "CUDAGraph", "graph"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))

    def _name(self, kind: str) -> str:
        self.created[kind] += 1
        return f"{kind}{self.created[kind]}"

    def Stream(self, device=None) -> FakeStream:
        return FakeStream(self._name("side"), self.log)

    def current_stream(self, device=None) -> FakeStream:
        return self.streams[-1]

    @contextlib.contextmanager
    def stream(self, s: FakeStream | None):
        self.streams.append(s or self.streams[-1])
        yield
        self.streams.pop()

    def CUDAGraph(self):
        name, log = self._name("g"), self.log
        return type("FakeGraph", (), {"name": name, "pool": lambda g: ("pool", name),
                                      "replay": lambda g: log.append(("replay", name))})()

    def graph(self, g, pool=None, stream=None, capture_error_mode="global"):
        self.log.append(("capture", g.name, pool, stream.name if stream else None, capture_error_mode))
        return self.stream(stream or FakeStream("capture", self.log))  # torch's own capture stream by default

    def on(self) -> str:
        """The stream that work runs on now."""
        return self.streams[-1].name


def test_side_stream_waits_for_the_current_stream_and_is_waited_for(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    with side_stream():
        cuda.log.append(("work on", cuda.on()))
    assert cuda.log == [("wait", "side1", "default"), ("work on", "side1"), ("wait", "default", "side1")]
    with side_stream(FakeStream("mine", cuda.log)):
        assert cuda.on() == "mine"


def test_a_graphed_call_copies_its_inputs_in_and_returns_the_captures_outputs(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    x, absent = torch.ones(3), None
    call = GraphedCall(lambda x, cond: x * 2, {"x": x, "cond": absent}, capture_error_mode="thread_local")
    assert cuda.log == [("capture", "g1", None, None, "thread_local")]
    assert call.inputs["x"] is not x and call.inputs["cond"] is None
    x += 1  # the capture read a copy
    assert torch.equal(call.outputs, torch.full((3,), 2.0))
    out = call({"x": torch.full((3,), 5.0), "cond": None})
    assert out is call.outputs and torch.equal(call.inputs["x"], torch.full((3,), 5.0))
    assert cuda.log[-1] == ("replay", "g1")
    assert call.fits({"x": torch.zeros(3), "cond": None})
    assert not call.fits({"x": torch.zeros(4), "cond": None}) and not call.fits({"x": torch.zeros(3).double(),
                                                                                 "cond": None})
    assert not call.fits({"x": torch.zeros(3), "cond": torch.zeros(3)})


@pytest.mark.parametrize("sync", [False, True])
def test_train_step_warms_up_then_captures_once_and_replays(monkeypatch, sync):
    """Graph mode: WARMUP_STEPS eager steps each on a side stream, then one capture (two under grad_sync, the
    second in the first's pool, the all-reduce eager between their replays), then replays only."""
    cuda = FakeCuda(monkeypatch)
    net = torch.nn.Linear(4, 2)
    loss_fn = (lambda b: (cuda.log.append(("loss", cuda.on())), torch.nn.functional.mse_loss(net(b["x"]), b["y"]))[1])
    grad_sync = (lambda params: cuda.log.append(("sync", cuda.on()))) if sync else None
    step = TrainStep(loss_fn, list(net.parameters()), torch.optim.AdamW(net.parameters()), mode="graph",
                     grad_sync=grad_sync)
    batch = {"x": torch.randn(8, 4), "y": torch.randn(8, 2)}
    for i in range(1, WARMUP_STEPS + 1):
        cuda.log.clear()
        step(batch, 1e-3)
        side = f"side{i}"
        assert cuda.log == [("wait", side, "default"), ("loss", side)] + [("sync", side)] * sync + [
            ("wait", "default", side)]
    cuda.log.clear()
    loss = step(batch, 1e-3)
    captures = [("capture", "g1", None, None, "global"), ("loss", "capture")]
    captures += [("capture", "g2", ("pool", "g1"), None, "global")] if sync else []
    replays = [("replay", "g1")] + ([("sync", "default"), ("replay", "g2")] if sync else [])
    assert cuda.log == captures + replays and loss is not step.graph.outputs  # a copy: the next replay rewrites it
    cuda.log.clear()
    step(batch, 1e-3)
    assert cuda.log == replays and step.calls == WARMUP_STEPS + 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("sync", [False, True])
def test_train_step_replays_match_the_eager_steps_on_cuda(sync):
    """Graph mode gives eager mode's losses and weights, also split in two graphs around a gradient sync."""
    from repro.toymodels.engine import make_adamw

    def train(mode: str):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.SiLU(), torch.nn.Linear(16, 3)).cuda()
        params = list(net.parameters())
        opt = make_adamw(params, 1e-2, torch.device("cuda"), 0.01, graph=True)  # the same AdamW in both modes
        halve = (lambda ps: torch._foreach_mul_([p.grad for p in ps], 0.5)) if sync else None
        step = TrainStep(lambda b: torch.nn.functional.mse_loss(net(b["x"]), b["y"]), params, opt, grad_clip=0.5,
                         mode=mode, grad_sync=halve)
        gen = torch.Generator().manual_seed(1)
        losses = [step({"x": torch.randn(8, 6, generator=gen).cuda(), "y": torch.randn(8, 3, generator=gen).cuda()},
                       1e-2 / (1 + i)) for i in range(10)]
        return torch.stack(losses), [p.detach().clone() for p in params], step

    loss_g, params_g, step = train("graph")
    loss_e, params_e, _ = train("eager")
    assert step.graph is not None and (step.update_graph is not None) == sync
    torch.testing.assert_close(loss_g, loss_e, rtol=1e-5, atol=1e-6)
    for a, b in zip(params_g, params_e):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
