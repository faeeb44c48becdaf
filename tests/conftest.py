"""Shared fixtures: the default model (pulled once into the cache, as a user's `edgert pull`
would), edgert's loaded model and llama.cpp's, kept for the whole session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

THREADS = 2


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    from edgert.store import DEFAULT_MODEL, pull

    return pull(DEFAULT_MODEL, progress=False)


@pytest.fixture(scope="session")
def default_model(default_model_path):
    import edgert

    return edgert.load(str(default_model_path), n_ctx=1024, threads=THREADS)


@pytest.fixture(scope="session")
def llama_model(default_model_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(model_path=str(default_model_path), n_ctx=1024, n_batch=1024, n_ubatch=1024,
                           n_threads=THREADS, logits_all=True, verbose=False)
