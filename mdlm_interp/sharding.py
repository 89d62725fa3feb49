"""Work shared over processes (torchrun): which rows are this process's, and steps that every process takes together.

Under ``torchrun --nproc-per-node N -m mdlm_interp COMMAND ...`` each of the N processes runs the whole
command; ``joined`` puts it into torchrun's process group (gloo: only small Python objects travel, so
the same backend serves CPU and GPU runs) and returns its ``Shard`` (rank, world size). A heavy
command then gives each rank a contiguous block of its batches (``Shard.block``), lets the leader
(rank 0) alone claim, check and write the shared outputs (``Shard.step(..., leader_only=True)``), and
meets at the end of each phase (``Shard.step``), where every rank learns whether all others succeeded.

A failure never leaves the others waiting: a rank that fails announces it at the next meeting (the
others are either there already or arrive when their own part is done), and every rank then stops.
The lowest failing rank re-raises its own error (the command line prints it as its one line); every
other rank raises ``errors.PeerFailed``, which the command line ends quietly (exit code 2). A process
that dies without a word (killed, out of memory) is noticed by torchrun, which stops the others.

Without torchrun (no ``WORLD_SIZE`` above 1) the shard is the whole: one rank of one, every step just
runs, and nothing is imported from ``torch.distributed``.
"""

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from mdlm_interp.errors import PeerFailed

WAIT = timedelta(hours=24)  # how long a rank waits at a meeting for the others to finish their part


@dataclass
class Shard:
    """One process's share of a run: ``rank`` of ``world`` processes (0 of 1 without torchrun).
    ``failed`` becomes True once a meeting has reported a failure (after it no rank meets again)."""

    rank: int = 0
    world: int = 1
    failed: bool = False

    @property
    def leader(self) -> bool:
        """Whether this is rank 0, which claims, checks and writes the shared outputs."""
        return self.rank == 0

    def block(self, n: int) -> range:
        """Return this rank's contiguous block of ``range(n)`` (blocks in rank order, sizes differing by at most 1)."""
        return range(n * self.rank // self.world, n * (self.rank + 1) // self.world)

    def exchange(self, value=None) -> list:
        """Meet every rank and return each rank's ``value`` (picklable), in rank order. Raises ``PeerFailed``
        if another rank announced a failure at this meeting (or the group is gone)."""
        return [value for _, value in self._meet((None, value))]

    def step(self, work, *, leader_only: bool = False):
        """Run ``work()`` (on the leader only with ``leader_only``), then meet every rank; return its result
        (with ``leader_only``, the leader's result on every rank). If ``work`` failed on any rank, the lowest
        failing rank re-raises its error and the others raise ``PeerFailed``."""
        if self.world == 1:
            return work()
        try:
            value = work() if self.leader or not leader_only else None
        except BaseException as error:
            self.announce(error)
        if leader_only:
            return self.exchange(value)[0]
        self.exchange()
        return value

    def announce(self, error: BaseException):
        """Tell every rank that ``error`` ended this rank's work, at the meeting they are at or reach next;
        then raise: ``error`` itself on the lowest failing rank, ``PeerFailed`` on the others. Once a
        failure is known (``failed``), ``error`` is raised as it is, without meeting again."""
        if self.world == 1 or self.failed or isinstance(error, PeerFailed):
            raise error
        try:
            outcomes = self._meet((describe(error), None))
        except PeerFailed:
            raise error from None
        first = next(rank for rank, (problem, _) in enumerate(outcomes) if problem is not None)
        if first == self.rank:
            raise error
        raise PeerFailed(f"process {first} of {self.world} failed: {outcomes[first][0]}") from error

    @contextmanager
    def guard(self):
        """Wrap a whole command: a failure inside that no step has announced yet is announced (so that the
        other ranks stop at their next meeting); a success ends with a last meeting of every rank."""
        try:
            yield self
        except BaseException as error:
            self.announce(error)
        else:
            self.exchange()

    def _meet(self, outcome: tuple) -> list:
        """Gather every rank's (problem or None, value); raise ``PeerFailed`` naming the lowest failing rank
        unless this rank is announcing a problem itself."""
        if self.world == 1:
            return [outcome]
        import torch.distributed as dist

        outcomes = [None] * self.world
        try:
            dist.all_gather_object(outcomes, outcome)
        except RuntimeError as error:  # a peer's connection closed: it died
            self.failed = True
            raise PeerFailed(f"lost another process of the run ({str(error).splitlines()[0]})") from None
        failures = [rank for rank, (problem, _) in enumerate(outcomes) if problem is not None]
        if failures:
            self.failed = True
            if outcome[0] is None:
                first = failures[0]
                raise PeerFailed(f"process {first} of {self.world} failed: {outcomes[first][0]}")
        return outcomes


def describe(error: BaseException) -> str:
    """Return ``error`` as one line: its message, or its type's name when it has none."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


def world_size() -> int:
    """Return the number of processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def joined(device: str):
    """Yield (``Shard``, device) for this process: under torchrun (``WORLD_SIZE`` above 1) after joining the
    process group (kept if the caller joined already, else left at the end), with a CUDA device turned into
    this process's local GPU; without torchrun ``(Shard(), device)``. The block runs under ``Shard.guard``."""
    world = world_size()
    if world == 1:
        yield Shard(), device
        return
    import torch.distributed as dist

    own = not dist.is_initialized()
    if own:
        dist.init_process_group("gloo", timeout=WAIT)
    shard = Shard(dist.get_rank(), dist.get_world_size())
    if device.startswith("cuda"):
        device = f"cuda:{os.environ.get('LOCAL_RANK', shard.rank)}"
    try:
        with shard.guard():
            yield shard, device
    finally:
        if own:
            dist.destroy_process_group()
