"""The trainer loop every objective shares: AdamW steps, resumable state, deterministic CPU settings.

An objective plugs in as a function ``micro_loss(step, micro) -> (loss, terms)``: the scalar to
backpropagate for micro-batch ``micro`` of optimizer step ``step`` and the floats to show and log
(e.g. ``{"loss": ...}`` or ``{"loss": ..., "ce": ..., "tv": ...}``). ``TrainLoop.run`` takes the
steps: learning rate from a schedule, ``grad_accum`` micro-batches accumulated (each loss divided by
``grad_accum``), the gradient norm clipped, one AdamW step, the terms smoothed (0.98 / 0.02) on a
progress bar, and an ``on_step`` callback for evaluation, logs and checkpoints. A loss or gradient
norm that is not finite stops the run with a ``UsageError`` before the step changes any weight. Every
random draw belongs to the objective, seeded by its (seed, step, micro), so a run is bitwise
reproducible for a seed and thread count (``deterministic``), and a run resumed from
``training.run_folder.save_state`` gives the same weights as an uninterrupted one. The organisms'
trainer (``training.pretrain``) and the MA-loss trainer (``training.ma``) both run on it.
"""

import math
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

from mdlm_interp.errors import UsageError

SMOOTHING = (0.98, 0.02)  # running value = 0.98 * running + 0.02 * new


def make_optimizer(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """Return a fresh AdamW over ``params`` (betas 0.9 / 0.95, eps 1e-8, no foreach: the same
    arithmetic on every platform)."""
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay, foreach=False)


def warmup_cosine(peak: float, step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """Return the learning rate at ``step`` of ``steps``: linear warmup over ``warmup`` steps to
    ``peak``, then cosine decay to ``min_ratio * peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@contextmanager
def deterministic(threads: int):
    """Within the block: ``threads`` CPU threads and torch's deterministic algorithms (bitwise
    reproducible on CPU); the previous settings are restored afterwards."""
    previous = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])


def smooth(running: dict | None, terms: dict) -> dict:
    """Return the running values after one more step's ``terms`` (the first step starts them)."""
    if running is None:
        return dict(terms)
    old, new = SMOOTHING
    return {key: old * running[key] + new * value for key, value in terms.items()}


def diverged(step: int, what: str, value: torch.Tensor) -> None:
    """Raise ``UsageError`` if ``value`` (a scalar of optimizer step ``step``) is NaN or infinite: training
    has diverged, and the step must not change the weights (the last saved state stays as it was)."""
    if not bool(torch.isfinite(value.detach())):
        raise UsageError(f"training diverged: the {what} is {value.item()} at step {step + 1} (try a lower learning "
                         "rate); the weights were not updated and the last saved state is kept")


class TrainLoop:
    """Optimizer steps over named trainable parameters (see the module docstring).

    ``params``: name -> Parameter (the ones the optimizer updates and ``save_state`` keeps);
    ``grad_clip``: largest gradient norm; ``grad_accum``: micro-batches per optimizer step.
    """

    def __init__(self, params: dict, optimizer: torch.optim.Optimizer, grad_clip: float, grad_accum: int = 1):
        self.params = params
        self.optimizer = optimizer
        self.grad_clip = grad_clip
        self.grad_accum = grad_accum

    def step(self, step: int, lr: float, micro_loss: Callable) -> dict:
        """Take optimizer step ``step`` at learning rate ``lr``; return its terms (mean over micro-batches)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict = {}
        for micro in range(self.grad_accum):
            loss, terms = micro_loss(step, micro)
            diverged(step, "loss", loss)
            (loss if self.grad_accum == 1 else loss / self.grad_accum).backward()
            for key, value in terms.items():
                totals[key] = totals.get(key, 0.0) + value
        diverged(step, "gradient norm", nn.utils.clip_grad_norm_(list(self.params.values()), self.grad_clip))
        self.optimizer.step()
        return totals if self.grad_accum == 1 else {k: v / self.grad_accum for k, v in totals.items()}

    def run(self, *, start: int, steps: int, micro_loss: Callable, learning_rate: Callable[[int], float],
            on_step: Callable, running: dict | None = None, desc: str = "training", progress: bool = True) -> dict | None:
        """Take steps ``start`` .. ``steps - 1``; return the running (smoothed) terms at the end.

        After each step ``on_step(done, terms, running, bar)`` runs (``done`` = step + 1; ``bar`` the
        tqdm bar, whose ``write`` prints above it). The bar shows the running terms.
        """
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, desc=desc, disable=not progress, mininterval=2.0, dynamic_ncols=True)
        for step in range(start, steps):
            terms = self.step(step, learning_rate(step), micro_loss)
            running = smooth(running, terms)
            bar.update(1)
            bar.set_postfix({key: f"{value:.3f}" for key, value in running.items()}, refresh=False)
            on_step(step + 1, terms, running, bar)
        bar.close()
        return running
