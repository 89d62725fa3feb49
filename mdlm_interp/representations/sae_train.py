"""Training an SAE: seedable, bitwise deterministic for a seed and thread count, resumable.

Runs on the toolkit's one trainer loop (``training.loop.TrainLoop``: AdamW, gradient clipping, the
progress bar with running L0, MSE, explained variance (ev), dead fraction and the loss terms). Batches
come from a *batch source*: any object with ``d_in``, ``describe()`` (a JSON dict naming the data,
compared on resume) and ``batch(step) -> float32 [batch_size, d_in]``, a pure function of the step,
so a run resumed at step s sees the batches an uninterrupted run sees. ``ArrayBatches`` serves an
in-memory array; ``activations.StoreBatches`` an activation store.

A latent is *dead* when it has fired on no row of the last ``dead_after`` batches; the top-k SAE's
auxiliary loss (``sae.losses``) trains dead latents to model the residual. Every ``save_every`` steps
the state (parameters, AdamW moments, the steps since each latent fired, the running terms) goes to
``OUT/train_state`` (``training.loop.save_state``); at the end the SAE is written in SAELens' format
(``sae_format.save_sae``) and the state removed.
"""

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mdlm_interp.errors import UsageError
from mdlm_interp.outputs import check_output_dir
from mdlm_interp.representations.sae import SAEShape, SparseAutoencoder, losses
from mdlm_interp.representations.sae_format import CONFIG_FILE, save_sae
from mdlm_interp.training.loop import TrainLoop, deterministic, make_optimizer, warmup_cosine
from mdlm_interp.training.run_folder import STATE_DIR, load_state, remove_state, resume_position, save_state


@dataclass(frozen=True)
class SAETrainConfig:
    """Everything that determines a trained SAE besides its data.

    architecture: "topk" or "standard"; d_sae: dictionary size; k: active latents (top-k);
    l1_coefficient: sparsity weight (standard); aux_k (None: d_in // 2) and aux_coefficient: the
    top-k auxiliary loss; dead_after: batches without firing that make a latent dead; steps,
    batch_size; lr: peak AdamW learning rate (linear warmup over warmup_steps, cosine decay to
    min_lr_ratio * lr); grad_clip; seed (initialisation; the batch source has its own);
    threads: CPU threads (part of bitwise reproducibility); save_every: steps between saved states.
    """

    architecture: str = "topk"
    d_sae: int = 1024
    k: int | None = 32
    l1_coefficient: float = 1.0
    aux_k: int | None = None
    aux_coefficient: float = 1 / 32
    dead_after: int = 100
    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 1
    save_every: int = 100

    def shape(self, d_in: int) -> SAEShape:
        """Return the SAE's shape on activations of width ``d_in`` (UsageError for bad k or widths)."""
        return SAEShape(self.architecture, int(d_in), self.d_sae, self.k if self.architecture == "topk" else None)

    def check(self) -> None:
        """Raise a one-line UsageError for values no run can use."""
        for name in ("steps", "batch_size", "dead_after", "save_every", "threads"):
            if getattr(self, name) < 1:
                raise UsageError(f"SAE training: {name} must be at least 1 (got {getattr(self, name)})")
        for name in ("lr", "l1_coefficient", "aux_coefficient", "grad_clip", "min_lr_ratio"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name == "lr" and value == 0):
                raise UsageError(f"SAE training: {name} must be a finite {'positive' if name == 'lr' else 'non-negative'} "
                                 f"number (got {value})")
        if self.d_sae > 2 ** 24 or self.batch_size > 2 ** 24:
            raise UsageError(f"SAE training: d_sae and batch_size must be at most {2 ** 24} "
                             f"(got {self.d_sae}, {self.batch_size})")
        if self.seed < 0 or self.threads > 1024:
            raise UsageError(f"SAE training: seed must be at least 0 and threads at most 1024 "
                             f"(got seed {self.seed}, threads {self.threads})")


class ArrayBatches:
    """A batch source over an in-memory array ``x`` [n, d_in]: each epoch is a seeded permutation of the
    rows (numpy, seeded by (seed, epoch)); batch s holds rows s * batch_size ... of that sequence."""

    def __init__(self, x, batch_size: int, seed: int = 0, name: str = "array"):
        self.x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        if self.x.ndim != 2 or len(self.x) == 0:
            raise UsageError(f"SAE training needs activations [n, d] with n > 0, got shape {list(self.x.shape)}")
        self.batch_size, self.seed, self.name = int(batch_size), int(seed), name
        self.d_in = self.x.shape[1]
        self._orders: dict = {}

    def describe(self) -> dict:
        """Return the JSON dict that names this data (compared when a run resumes)."""
        return {"source": self.name, "rows": len(self.x), "d_in": self.d_in, "batch_size": self.batch_size,
                "seed": self.seed}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.x))}
        return self._orders[epoch]

    def batch(self, step: int) -> torch.Tensor:
        """Return the rows [batch_size, d_in] (float32) of step ``step``."""
        n = len(self.x)
        flat = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        rows = np.concatenate([self._order(int(e))[flat[flat // n == e] % n] for e in np.unique(flat // n)])
        return self.x[torch.as_tensor(rows)]


def train_sae(batches, config: SAETrainConfig, out, *, hook_name: str, metadata: dict | None = None,
              resume: bool = False, stop_after: int | None = None, progress: bool = True) -> dict:
    """Train an SAE on ``batches`` (a batch source) and write it to folder ``out``; return a summary:
    {"steps_done", "complete", "terms" (running terms at the end), "tokens_per_s", "out"}.

    hook_name: the TransformerLens hook name of the site (written to cfg.json). resume: continue the
    state in ``out`` (its config and data must match). stop_after: stop once this many steps are
    done (saving the state), as a kill would, but cleanly; the run is completed by a later resume.
    A new run refuses an ``out`` that exists and is not an empty folder (one-line UsageError).
    """
    config.check()
    shape = config.shape(batches.d_in)
    out = Path(out)
    if resume and (out / CONFIG_FILE).exists():
        raise UsageError(f"cannot resume: the SAE in {out} is complete")
    if not resume and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists; choose a new output folder (or resume)")
    check_output_dir(out, allow=(STATE_DIR,))
    wanted = {"config": asdict(config), "data": batches.describe(), "hook_name": hook_name}
    position = resume_position(out, wanted) if resume else None
    stop = config.steps if stop_after is None else min(int(stop_after), config.steps)
    with deterministic(config.threads):
        try:
            sae = SparseAutoencoder(shape).initialize(config.seed, b_dec=batches.batch(0).mean(dim=0))
        except RuntimeError as error:  # the allocator's refusal
            raise UsageError(f"an SAE of {shape.d_in} x {shape.d_sae} does not fit in memory "
                             f"({str(error).splitlines()[0][:120]})") from None
        since_fired = torch.zeros(shape.d_sae)
        params = {name: getattr(sae, name) for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
        optimizer = make_optimizer(list(params.values()), config.lr, weight_decay=0.0)
        start, running = 0, None
        if position is not None:
            load_state(out, {**params, "since_fired": since_fired}, optimizer)
            start, running = position["step"], position["running"]
        aux_k = config.aux_k or max(1, shape.d_in // 2)

        def micro_loss(step, micro):
            loss, terms, latents = losses(sae, batches.batch(step), since_fired >= config.dead_after,
                                          l1_coefficient=config.l1_coefficient, aux_k=aux_k,
                                          aux_coefficient=config.aux_coefficient)
            since_fired.copy_(torch.where((latents > 0).any(dim=0), 0.0, since_fired + 1))
            terms["dead"] = float((since_fired >= config.dead_after).float().mean())
            return loss, terms

        def on_step(done, terms, running_terms, bar):
            sae.normalize_decoder()
            if done % config.save_every == 0 or done == stop:
                out.mkdir(parents=True, exist_ok=True)
                save_state(out, {**params, "since_fired": since_fired}, optimizer,
                           {"step": done, "running": running_terms, "config": wanted})

        handle = sae.constrain_decoder()
        began = time.perf_counter()
        try:
            running = TrainLoop(params, optimizer, config.grad_clip).run(
                start=start, steps=stop, micro_loss=micro_loss, on_step=on_step, running=running,
                learning_rate=lambda s: warmup_cosine(config.lr, s, config.steps, config.warmup_steps,
                                                      config.min_lr_ratio),
                desc=f"SAE {hook_name}", progress=progress)
        finally:
            handle.remove()
        seconds = time.perf_counter() - began
    complete = stop == config.steps
    if complete:
        save_sae(sae, out, hook_name, {**(metadata or {}), "training": {**wanted, "final_terms": running}})
        remove_state(out)
    tokens = (stop - start) * config.batch_size
    return {"steps_done": stop, "complete": complete, "terms": running, "out": str(out),
            "tokens_per_s": tokens / seconds if seconds > 0 and tokens else None}
