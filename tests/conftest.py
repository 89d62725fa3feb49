"""Shared fixtures: tiny random checkpoints of every family, written once per test session."""

import fcntl
import os
from contextlib import contextmanager

import pytest
import torch

FAMILY_NAMES = ["llada", "dream", "llama", "qwen2"]  # the four original families (tests/models/test_families_moe.py: the rest)

os.environ.setdefault("OMP_NUM_THREADS", "1")  # also for the CLI subprocesses
torch.set_num_threads(1)  # tiny models: threads only add overhead (and thrash on a busy machine)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Return a function family -> path of a tiny random float32 checkpoint (seed 0), cached."""
    from mdlm_interp.models.random_checkpoint import write_random_checkpoint
    from mdlm_interp.tasks import tokenizer_corpus

    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = write_random_checkpoint(family, tmp_path_factory.mktemp(f"tiny-{family}"),
                                                    tokenizer_corpus(), seed=0)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """Return a function family -> loaded tiny model (cached)."""
    from mdlm_interp import load_model

    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_model(tiny_checkpoint(family))
        return cache[family]

    return get


@pytest.fixture(scope="session")
def process_group_lock(tmp_path_factory):
    """Return a context manager that holds this session's one lock on starting process groups (torchrun,
    gloo), so that no two test processes (pytest-xdist workers) run one at the same time: two groups on
    one machine at once have aborted a rank. The lock file lies in the folder pytest made for the
    session's temporary folders, which the workers share."""
    path = tmp_path_factory.getbasetemp().parent / "process-groups.lock"

    @contextmanager
    def held():
        with open(path, "a") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(file, fcntl.LOCK_UN)

    return held
