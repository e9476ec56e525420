"""Shared fixtures: tiny SDXL-format pipelines built in code (random weights, no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a hub from the tests


@pytest.fixture(scope="session")
def tiny_pipe():
    """A tiny random SDXL-format turbo pipeline (64 px, 4x VAE: blocks at 8x8 and 4x4)."""
    from repro.models.loading import load_pipeline

    return load_pipeline("tiny-random", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_pipe_dir(tmp_path_factory, tiny_pipe):
    """The tiny pipeline saved in the save_pretrained layout."""
    from repro.models.build import save_pipeline

    folder = tmp_path_factory.mktemp("tiny-sdxl")
    save_pipeline(tiny_pipe, folder)
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: tiny tensors gain nothing from more, and on a busy
    2-core machine oversubscribed OpenMP threads make them ~100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pipe(one_thread):
    """The tiny random pipeline, loaded per module, run on one thread."""
    from repro.models.loading import load_pipeline

    return load_pipeline("tiny-random", device="cpu")
