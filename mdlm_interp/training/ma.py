"""Fine-tuning with the mask-agnostic loss: LoRA (peft) on a loaded model, the shared trainer loop.

``train_ma(config, out)`` loads the base model, reads and checks every pair of the JSONL data
(``training.sft_data``) before writing anything, wraps the family's projection modules in LoRA
layers (peft, initialised from the seed) and runs ``training.loop.TrainLoop`` with the MA loss
(``training.ma_loss``) of each micro-batch of input pairs: x1 and x2 go through the model one after
the other, their logits into the loss, and the sum of both passes' gradients into one AdamW step
over the LoRA parameters only. ``out`` then holds:

- ``adapter_config.json``, ``adapter_model.safetensors``: the adapter in peft's own format
  (``peft.PeftModel.from_pretrained`` and ``load_model(..., adapter=out)`` read it);
- ``training_config.json``: the full configuration and provenance (command, versions, base weights
  and data fingerprints);
- ``train_log.csv``: per step the learning rate, loss, CE and TV terms, elapsed wall-clock and CPU seconds;
- ``checkpoints/step-NNNNNN/``: the adapter every ``save_every`` steps;
- ``README.md``: the adapter card (``training.adapter_card``), with ``training_curve.png``.

While it runs, ``train_state/`` holds the resumable state (LoRA weights, AdamW moments, position;
``training.run_folder``) and the run holds ``OUT.lock`` (a second run into the same folder is refused);
``resume=True`` continues it and gives the same adapter, bitwise, as an uninterrupted run (a run
killed before its first save starts again from step 0).
"""

import json
import math
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from mdlm_interp.errors import UsageError
from mdlm_interp.models.adapter import ADAPTER_WEIGHTS, TRAINING_CONFIG, base_reference, file_sha256
from mdlm_interp.models.families import PROJECTIONS
from mdlm_interp.outputs import apply_file_mode
from mdlm_interp.training.loop import TrainLoop, deterministic, make_optimizer, warmup_cosine
from mdlm_interp.training.ma_loss import ma_loss
from mdlm_interp.training.run_folder import (
    STATE_DIR,
    load_state,
    open_log,
    remove_state,
    resume_position,
    save_state,
    saved_position,
)
from mdlm_interp.training.sft_data import ma_batch, read_pairs

LOG_FILE = "train_log.csv"
LOG_COLUMNS = ("step", "lr", "loss", "ce", "tv", "seconds", "cpu_seconds")
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class MAConfig:
    """Everything that determines an MA-loss fine-tuning run (written to training_config.json).

    ``mask_ratio`` (low, high): range of the answer's masking ratio p; ``extra_masks`` (low, high):
    range of the terminal mask counts l1 != l2; ``lora_targets``: projection module names (empty:
    the family's ``lora_targets``); ``chat``: wrap prompts in the family's chat template.
    """

    model: str
    data: str
    steps: int = 1200
    lr: float = 1e-4
    batch_size: int = 8
    grad_accum: int = 1
    alpha: float = 1.0
    beta: float = 1.0
    mask_ratio: tuple = (0.001, 1.0)
    extra_masks: tuple = (0, 63)
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple = ()
    seed: int = 0
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    save_every: int = 100
    threads: int = 1
    chat: bool = True
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self):
        def need(ok: bool, message: str):
            if not ok:
                raise UsageError(message)

        def finite(*values) -> bool:
            return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)

        need(self.steps >= 1, f"--steps must be at least 1, got {self.steps}")
        need(finite(self.lr) and self.lr > 0, f"--lr must be a finite positive learning rate, got {self.lr}")
        need(self.batch_size >= 1 and self.grad_accum >= 1, "--batch-size and --grad-accum must be at least 1")
        need(finite(self.alpha, self.beta) and self.alpha >= 0 and self.beta >= 0 and self.alpha + self.beta > 0,
             f"--alpha and --beta must be finite, >= 0 and not both 0, got {self.alpha} and {self.beta}")
        low, high = self.mask_ratio
        need(finite(low, high) and 0 < low <= high <= 1,
             f"--mask-ratio LOW:HIGH needs 0 < LOW <= HIGH <= 1, got {low}:{high}")
        low, high = self.extra_masks
        need(0 <= low < high, f"--extra-masks MIN:MAX needs 0 <= MIN < MAX (l1 != l2), got {low}:{high}")
        need(self.lora_r >= 1 and finite(self.lora_alpha) and self.lora_alpha > 0,
             f"--lora-r must be at least 1 and --lora-alpha finite and positive, got {self.lora_r} and "
             f"{self.lora_alpha}")
        unknown = [t for t in self.lora_targets if t not in PROJECTIONS]
        need(not unknown, f"unknown --lora-targets {unknown}; choose from {', '.join(PROJECTIONS)}")
        need(self.warmup >= 0 and self.save_every >= 0, "--warmup and --save-every must be >= 0")
        need(self.threads >= 1, f"--threads must be at least 1, got {self.threads}")
        need(finite(self.weight_decay, self.grad_clip, self.min_lr_ratio) and self.weight_decay >= 0
             and self.grad_clip > 0 and 0 <= self.min_lr_ratio <= 1,
             "weight decay, gradient clip and minimum learning-rate ratio must be finite, >= 0, > 0 and in [0, 1]")
        for name in ("mask_ratio", "extra_masks", "lora_targets"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def to_json(self) -> dict:
        """Return the configuration as a JSON-ready dict (tuples as lists)."""
        return json.loads(json.dumps(asdict(self)))


def check_output(out: Path, resume: bool) -> bool:
    """Raise ``UsageError`` unless ``out`` can take a new run (missing or empty) or, with ``resume``, holds
    an unfinished run; return whether that run has a saved state to continue (False: a run killed
    before its first save, which starts again from step 0)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} is a file, not a folder")
    if not (out if out.exists() else out.parent).is_dir():
        raise UsageError(f"cannot write {out}: folder {out.parent} does not exist")
    if resume:
        if saved_position(out) is not None:
            return True
        if (out / ADAPTER_WEIGHTS).exists():
            raise UsageError(f"{out}: nothing to resume (no {STATE_DIR}/state.json; the run there has finished)")
        if not (out / TRAINING_CONFIG).exists():
            raise UsageError(f"{out}: nothing to resume (no {STATE_DIR}/state.json)")
        return False
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty; pass --resume to continue the run there or choose "
                         f"another --out")
    return False


def check_lora_rank(model, targets: tuple, rank: int) -> None:
    """Raise ``UsageError`` if ``rank`` is larger than the smallest width (input or output) of the
    projections ``targets`` of ``model`` (a rank beyond it adds nothing and can exhaust memory)."""
    widths = {name.rsplit(".", 1)[-1]: min(module.in_features, module.out_features)
              for name, module in model.named_modules()
              if name.rsplit(".", 1)[-1] in targets and isinstance(module, torch.nn.Linear)}
    if not widths:
        raise UsageError(f"the model has none of the projections {', '.join(targets)} to adapt")
    if rank > min(widths.values()):
        narrowest = min(widths, key=widths.get)
        raise UsageError(f"--lora-r {rank} is more than the width {widths[narrowest]} of {narrowest}, the narrowest "
                         "adapted projection (a LoRA rank is at most that)")


def provenance(config: MAConfig, lm, n_pairs: int, command_line: str) -> dict:
    """Return the run's provenance: command, versions, base model and its weights fingerprint, data fingerprint."""
    import peft

    from mdlm_interp import __version__

    return {
        "command_line": command_line, "mdlm_interp": __version__, "torch": torch.__version__,
        "peft": peft.__version__, "python": platform.python_version(), "base_model": lm.source,
        "base_path": str(lm.path), "family": lm.spec.family, "base_weights_fingerprint": lm.fingerprint(),
        "data": config.data, "data_fingerprint": "sha256:" + file_sha256(config.data), "n_pairs": n_pairs,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def lora_model(model, config: MAConfig, targets: tuple, base: str):
    """Wrap ``model`` in peft LoRA layers on ``targets`` (A drawn from ``config.seed``, B zero); return the
    ``PeftModel``. Only the LoRA parameters train. ``base`` (``models.adapter.base_reference``: the model id
    and its weights fingerprint) is what the saved adapter_config.json names as its base model."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules=list(targets), lora_dropout=0.0,
                      bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        peft_model = get_peft_model(model, lora)
    peft_model.peft_config["default"].base_model_name_or_path = base  # peft takes it from HF models only
    return peft_model


def save_adapter(peft_model, directory: Path) -> None:
    """Write the adapter in peft's format (adapter_config.json, adapter_model.safetensors) into ``directory``.

    peft's template model card is not kept (the run's card is ``training.adapter_card``).
    """
    peft_model.save_pretrained(str(directory), save_embedding_layers=False)  # no hub lookup of the base config
    (directory / "README.md").unlink(missing_ok=True)
    apply_file_mode(directory)


def train_ma(config: MAConfig, out, *, resume: bool = False, progress: bool = True,
             command_line: str | None = None) -> dict:
    """Run ``config`` into the folder ``out`` (see the module docstring); return a summary
    ``{"config", "provenance", "seconds", "final": running terms, "steps"}``.

    Everything is checked first: the output folder (and that no other run is writing it), the model (a
    diffusion family with a mask token), the LoRA rank against the model's widths and every line of
    the data; a bad input raises ``UsageError`` with nothing written.
    """
    from mdlm_interp.outputs import OutputLock, check_not_held, output_path

    out = output_path(out)
    check_not_held(out)
    check_output(out, resume)
    with OutputLock(out):  # a second run into the same folder is refused until this one ends
        return locked_train_ma(config, out, resume, progress, command_line)


def locked_train_ma(config: MAConfig, out: Path, resume: bool, progress: bool, command_line: str | None) -> dict:
    """The body of ``train_ma`` (same arguments and result), run while holding ``out``'s lock."""
    from mdlm_interp.models.loader import load_model

    saved = check_output(out, resume)  # again: another run may have written it before the lock was ours
    lm = load_model(config.model, device=config.device, dtype=config.dtype)
    if lm.spec.causal or lm.mask_token_id is None:
        raise UsageError(f"{config.model}: the MA loss needs a masked diffusion model (LLaDA or Dream), "
                         f"not a causal {lm.spec.family} model")
    check_lora_rank(lm.model, config.lora_targets or lm.spec.lora_targets, config.lora_r)
    eos_id = lm.tokenizer.convert_tokens_to_ids(lm.spec.special_tokens["eos"])
    pairs = read_pairs(config.data, lm.tokenizer, eos_id, lm.spec.chat_template if config.chat else None,
                       lm.config.max_seq_len, config.extra_masks[1])
    command_line = command_line or shlex.join(sys.argv)
    record = {"config": config.to_json(), "provenance": provenance(config, lm, len(pairs), command_line)}
    if resume:
        try:
            previous = json.loads((out / TRAINING_CONFIG).read_text())
            previous_config, previous_provenance = previous["config"], previous["provenance"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UsageError(f"{out}: {TRAINING_CONFIG} is missing or unreadable; cannot resume") from None
        if previous_config != record["config"]:
            raise UsageError(f"{out}: the saved run was made with a different configuration")
        for key in ("base_weights_fingerprint", "data_fingerprint"):
            if previous_provenance.get(key) != record["provenance"][key]:
                raise UsageError(f"{out}: the saved run had {key} {previous_provenance.get(key)}, now "
                                 f"{record['provenance'][key]}")
        record["provenance"]["resumed"] = command_line
        record["provenance"]["created"] = previous_provenance.get("created", record["provenance"]["created"])
    out.mkdir(parents=True, exist_ok=True)
    (out / TRAINING_CONFIG).write_text(json.dumps(record, indent=2) + "\n")
    with deterministic(config.threads):
        summary = run_ma(config, lm, pairs, eos_id, out, resume and saved, progress)
    from mdlm_interp.training.adapter_card import write_adapter_card

    write_adapter_card(out)
    return dict(summary, **record)


def run_ma(config: MAConfig, lm, pairs: list, pad_id: int, out: Path, resume: bool, progress: bool) -> dict:
    """The training part of ``train_ma`` (run under ``deterministic``); returns wall-clock and CPU seconds,
    steps, the final running terms, the number of trained parameters and the LoRA targets."""
    targets = config.lora_targets or lm.spec.lora_targets
    peft_model = lora_model(lm.model, config, targets, base_reference(lm.source, lm.fingerprint()))
    decoder = peft_model.base_model.model  # the hooked decoder, now with LoRA layers inside
    params = {name: p for name, p in peft_model.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(list(params.values()), config.lr, config.weight_decay)
    position = {"step": 0, "seconds": 0.0, "cpu_seconds": 0.0, "running": None}
    if resume:
        resume_position(out, config.to_json())
        position = {k: v for k, v in load_state(out, params, optimizer).items() if k != "config"}
    log_file, log = open_log(out / LOG_FILE, position["step"], LOG_COLUMNS)
    started = time.perf_counter() - position["seconds"]
    cpu_started = time.process_time() - position["cpu_seconds"]  # the machine is shared: wall time overstates
    device = next(decoder.parameters()).device

    def forward(ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return decoder(ids.to(device), attention_mask=None if bool(valid.all()) else valid.long().to(device))

    def micro_loss(step: int, micro: int):
        batch = ma_batch(pairs, step * config.grad_accum + micro, config.batch_size, config.seed, lm.mask_token_id,
                         pad_id, config.mask_ratio, config.extra_masks)
        logits = [forward(ids, valid) for ids, valid in zip(batch.inputs, batch.valid)]
        terms = ma_loss(logits[0], logits[1], batch.targets.to(device), batch.masked.to(device), batch.p.to(device),
                        alpha=config.alpha, beta=config.beta, prediction_offset=lm.spec.prediction_offset)
        return terms.loss, {"loss": terms.loss.item(), "ce": terms.ce.item(), "tv": terms.tv.item()}

    def learning_rate(step: int) -> float:
        return warmup_cosine(config.lr, step, config.steps, min(config.warmup, config.steps), config.min_lr_ratio)

    def on_step(done: int, terms: dict, running: dict, bar):
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        log.writerow([done, f"{learning_rate(done - 1):.6g}"] + [f"{terms[k]:.6f}" for k in ("loss", "ce", "tv")]
                     + [f"{seconds:.2f}", f"{cpu_seconds:.2f}"])
        log_file.flush()
        position.update(step=done, seconds=seconds, cpu_seconds=cpu_seconds, running=running)
        if config.save_every and done % config.save_every == 0:
            save_adapter(peft_model, out / CHECKPOINTS / f"step-{done:06d}")
            if done < config.steps:
                save_state(out, params, optimizer, dict(position, config=config.to_json()))

    decoder.train()
    running = TrainLoop(params, optimizer, config.grad_clip, config.grad_accum).run(
        start=position["step"], steps=config.steps, micro_loss=micro_loss, learning_rate=learning_rate,
        on_step=on_step, running=position["running"], desc=f"MA loss (alpha {config.alpha:g}, beta {config.beta:g})",
        progress=progress)
    log_file.close()
    decoder.eval()
    save_adapter(peft_model, out)
    remove_state(out)
    return {"seconds": position["seconds"], "cpu_seconds": position["cpu_seconds"], "steps": config.steps, "final": running,
            "n_trainable": sum(p.numel() for p in params.values()), "lora_targets": list(targets)}
