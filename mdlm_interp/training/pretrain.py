"""Training a model organism: stages, the family's objective, held-out evaluation, resumable state.

A run is a ``TrainConfig``: a family (llada, llama, dream or llada2), a shape preset, a seed, an optional
initial checkpoint (Dream starts from the trained Llama twin) and a list of stages (pretraining,
then SFT). Each step samples a fresh batch (``training.data``), applies the family's objective:

- llada: masked diffusion, prediction for token i at ``logits[:, i]``;
- dream: masked diffusion with the -1 offset, prediction for token i at ``logits[:, i - 1]``;
- llama: next-token cross-entropy;
- llada2 (mixture of experts, block diffusion): masked diffusion as llada, started from a dense organism
  (upcycled), a share of the batches under block attention, expert biases balanced after every step
  (``training.moe_training``);

and takes one AdamW step (warmup then cosine decay, gradient clipping) in the shared trainer loop
(``training.loop``, which the MA-loss trainer uses too). The run is deterministic for
a seed on CPU: fixed thread count, deterministic algorithms, every random draw from generators
seeded by (seed, stage, step). Every ``save_every`` steps the training state (weights and AdamW
moments as safetensors, position and history as JSON; never pickle) goes to ``OUT/train_state``
(``training.run_folder``); ``resume=True`` continues from it and gives the same weights as an
uninterrupted run. At the end the checkpoint directory (config.json, model.safetensors, tokenizer
files) is written; ``training.card`` measures it and adds the model card.
"""

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mdlm_interp.errors import UsageError
from mdlm_interp.models.families import FAMILIES, FamilySpec
from mdlm_interp.models.transformer import HookedDecoder
from mdlm_interp.training.data import DataConfig, sample_batch
from mdlm_interp.training.evaluate import EvalSetting, accuracy
from mdlm_interp.training.loop import TrainLoop, deterministic, make_optimizer, warmup_cosine
from mdlm_interp.training.moe_training import ExpertBalancer, block_length_for, upcycle
from mdlm_interp.training.objectives import apply_masks, causal_lm_loss, mask_ratios, masked_diffusion_loss
from mdlm_interp.training.run_folder import load_state, remove_state, resume_position, save_state

MONITOR_SEED_BASE = 500_000  # periodic held-out evaluation prompts: seeds 500000..


@dataclass(frozen=True)
class StageConfig:
    """One training stage: ``steps`` AdamW steps at peak learning rate ``lr`` on ``data``."""

    name: str
    steps: int
    lr: float
    data: DataConfig
    warmup: int = 50
    min_lr_ratio: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run (everything that determines the weights, plus evaluation settings)."""

    family: str
    preset: str
    seed: int
    stages: tuple[StageConfig, ...]
    init: str | None = None
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    threads: int = 2
    eval_every: int = 200
    eval_prompts: int = 200
    save_every: int = 100
    overrides: dict = field(default_factory=dict)  # DecoderConfig shape fields replacing the preset's
    block_fraction: float = 0.0  # share of batches under the family's block attention (block diffusion)

    def to_json(self) -> dict:
        """Return the config as JSON-ready dicts."""
        return asdict(self)

    @staticmethod
    def from_json(data: dict) -> "TrainConfig":
        """Rebuild a config written by ``to_json``."""
        stages = tuple(StageConfig(**dict(s, data=DataConfig(**s["data"]))) for s in data["stages"])
        return TrainConfig(**dict(data, stages=stages))


def init_weights(model: HookedDecoder, seed: int) -> None:
    """Initialise for training: N(0, 0.02) weights, output projections scaled by 1/sqrt(2 layers),
    zero biases (routers' expert biases included), unit norm weights (QK norms included); deterministic
    for ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    residual_std = 0.02 / math.sqrt(2 * model.cfg.n_layers)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("ln1.weight", "ln2.weight", "_norm.weight")) or name == "ln_final.weight":
                param.fill_(1.0)
            elif name.endswith((".bias", ".expert_bias")):
                param.zero_()
            else:
                std = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def load_init(model: HookedDecoder, source) -> None:
    """Copy the weights of ``source`` (a ``LoadedModel`` of any family, same shape) into ``model``.

    Parameters the source lacks (Dream's q/k/v biases when starting from the Llama twin) are zero.
    """
    if source.config.tie_embeddings != model.cfg.tie_embeddings:
        raise UsageError(f"{source.path}: tie_embeddings={source.config.tie_embeddings}, the model has "
                         f"{model.cfg.tie_embeddings}")
    theirs = dict(source.model.named_parameters())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in theirs:
                if theirs[name].shape != param.shape:
                    raise UsageError(f"{source.path}: {name} has shape {list(theirs[name].shape)}, "
                                     f"expected {list(param.shape)}")
                param.copy_(theirs[name])
            elif name.endswith(".bias"):
                param.zero_()
            else:
                raise UsageError(f"{source.path}: checkpoint has no {name}")


def load_source(init: str, tokenizer):
    """Load the checkpoint ``init`` to start from; its vocabulary must be the organism vocabulary."""
    from mdlm_interp.models.loader import load_model

    source = load_model(init)
    if source.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UsageError(f"{init}: its tokenizer differs from the organism vocabulary; ids would not match")
    return source


def load_dense_source(init: str):
    """Load the dense checkpoint ``init`` a mixture-of-experts organism starts from (``moe_training.upcycle``:
    its tokens are matched by string, so its vocabulary may differ)."""
    from mdlm_interp.models.loader import load_model

    return load_model(init)


def learning_rate(stage: StageConfig, step: int) -> float:
    """Return the learning rate at ``step`` of ``stage``: linear warmup, then cosine to ``min_lr_ratio``."""
    return warmup_cosine(stage.lr, step, stage.steps, stage.warmup, stage.min_lr_ratio)


def training_loss(model: HookedDecoder, spec: FamilySpec, mask_token_id: int | None, batch, generator,
                  data: DataConfig, block_fraction: float = 0.0) -> torch.Tensor:
    """Return the family's loss on ``batch`` (a scalar). See the module docstring for the objectives; a
    share ``block_fraction`` of a block-diffusion family's batches is read under its block attention."""
    block_length = block_length_for(spec.block_length, block_fraction, generator)
    if block_length is None:
        return _family_loss(model, spec, mask_token_id, batch, generator, data)
    with model.block_attention(block_length):
        return _family_loss(model, spec, mask_token_id, batch, generator, data)


def _family_loss(model: HookedDecoder, spec: FamilySpec, mask_token_id: int | None, batch, generator,
                 data: DataConfig) -> torch.Tensor:
    attention = None if bool(batch.valid.all()) else batch.valid
    if spec.causal:
        return causal_lm_loss(model(batch.ids, attention_mask=attention), batch.ids, batch.trained)
    p = mask_ratios(batch.ids.shape[0], generator)
    if data.answer_always_masked:
        p = torch.where(batch.answer, 1.0, p[:, None])
    noisy, masked = apply_masks(batch.ids, batch.trained, p, mask_token_id, generator)
    counts = batch.trained.sum(1).float()
    normalizer = counts if data.objective == "sft" else torch.full_like(counts, counts.sum().item() / len(counts))
    logits = model(noisy, attention_mask=attention)
    return masked_diffusion_loss(logits, batch.ids, masked, p, normalizer, spec.prediction_offset)


def write_checkpoint(out: Path, model: HookedDecoder, spec: FamilySpec, dtype: torch.dtype) -> None:
    """Write config.json, model.safetensors (``dtype``) and the tokenizer files of a checkpoint dir."""
    from mdlm_interp.models.checkpoint import config_json, save_weights
    from mdlm_interp.training.vocab import write_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    special_ids = write_tokenizer(out, spec)
    save_weights(model, spec, out, dtype)
    (out / "config.json").write_text(json.dumps(config_json(spec, model.cfg, special_ids, dtype), indent=2) + "\n")


def train(config: TrainConfig, out_dir: str | Path, resume: bool = False, dtype: torch.dtype = torch.float32,
          progress: bool = True, checkpoint_dir: str | Path | None = None) -> dict:
    """Run ``config`` and write the checkpoint to ``out_dir``; return a summary.

    The summary holds the config, per-stage seconds and final loss, the held-out accuracy history
    ``[{"stage", "step", "accuracy", "loss"}]`` (``eval_prompts`` prompts, 10 relevant + 40
    distractor examples, relevant block next to the query, one mask) and the total seconds.
    ``resume`` continues from ``out_dir/train_state`` (an error if there is none). The training state
    is removed once the checkpoint is written, unless ``checkpoint_dir`` is given: the checkpoint then
    goes there (e.g. a staging folder that replaces ``out_dir`` later) and the state stays until then.
    """
    if config.family not in FAMILIES:
        raise UsageError(f"unknown family '{config.family}' (choose from {', '.join(FAMILIES)})")
    with deterministic(config.threads):
        return run_stages(config, Path(out_dir), resume, dtype, progress,
                          None if checkpoint_dir is None else Path(checkpoint_dir))


def run_stages(config: TrainConfig, out: Path, resume: bool, dtype: torch.dtype, progress: bool,
               checkpoint_dir: Path | None = None) -> dict:
    """The body of ``train`` (same arguments and result), run under ``deterministic``."""
    from mdlm_interp.training.vocab import load_fast_tokenizer, padded_vocab_size

    spec = FAMILIES[config.family]
    tokenizer = load_fast_tokenizer(spec)
    moe = bool(spec.preset_config(config.preset, 1, dict(config.overrides)).n_experts)
    source = (load_dense_source(config.init) if moe else load_source(config.init, tokenizer)) if config.init else None
    overrides = dict(config.overrides)
    if source is not None:  # positions must mean what they meant to the source (Dream keeps Qwen's RoPE)
        overrides.setdefault("rope_theta", source.config.rope_theta)
    cfg = spec.preset_config(config.preset, padded_vocab_size(tokenizer.backend_tokenizer), overrides)
    model = HookedDecoder(cfg)
    init_weights(model, config.seed)
    if source is not None:
        upcycle(model, source, tokenizer) if moe else load_init(model, source)
    mask_id = tokenizer.mask_token_id if spec.mask_token else None
    balancer = ExpertBalancer(model) if cfg.router_bias and cfg.n_experts else None
    monitor = EvalSetting()
    params = dict(model.named_parameters())
    position = {"stage": 0, "step": 0, "history": [], "seconds": [0.0] * len(config.stages), "loss": [None] * len(config.stages)}
    saved = resume_position(out, config.to_json()) if resume else None
    out.mkdir(parents=True, exist_ok=True)
    for index, stage in enumerate(config.stages):
        optimizer = make_optimizer(model.parameters(), stage.lr, config.weight_decay)  # fresh moments per stage
        if resume:
            if saved["stage"] > index:
                continue
            position = {k: v for k, v in load_state(out, params, optimizer).items() if k != "config"}
            resume = False
        started = time.perf_counter() - position["seconds"][index]

        def micro_loss(step: int, micro: int, stage=stage):
            batch, generator = sample_batch(stage.data, spec, tokenizer, config.seed, stage.name, step,
                                            step / stage.steps)
            loss = training_loss(model, spec, mask_id, batch, generator, stage.data, config.block_fraction)
            return loss, {"loss": loss.item()}

        def on_step(done: int, terms: dict, running: dict, bar, index=index, stage=stage):
            if balancer is not None:
                balancer.update()
                balancer.reset()
            if config.eval_every and (done % config.eval_every == 0 or done == stage.steps):
                model.eval()
                acc = accuracy(model, spec, tokenizer, mask_id, monitor, config.eval_prompts, MONITOR_SEED_BASE)
                model.train()
                position["history"].append({"stage": stage.name, "step": done, "accuracy": acc,
                                            "loss": running["loss"], "seconds": round(time.perf_counter() - started, 1)})
                bar.write(f"{config.family} {stage.name} step {done}: loss {running['loss']:.3f}, "
                          f"held-out accuracy {acc:.3f}")
            position["seconds"][index] = time.perf_counter() - started
            position["loss"][index] = running["loss"]
            if done < stage.steps and config.save_every and done % config.save_every == 0:
                position.update(stage=index, step=done)
                save_state(out, params, optimizer, dict(position, config=config.to_json()))

        model.train()
        running = position["loss"][index]
        TrainLoop(params, optimizer, config.grad_clip).run(
            start=position["step"], steps=stage.steps, micro_loss=micro_loss,
            learning_rate=lambda step, stage=stage: learning_rate(stage, step), on_step=on_step,
            running=None if running is None else {"loss": running}, desc=f"{config.family} {stage.name}",
            progress=progress)
        position.update(stage=index + 1, step=0)
    model.eval()
    write_checkpoint(checkpoint_dir or out, model, spec, dtype)
    if checkpoint_dir is None:
        remove_state(out)
    return {"config": config.to_json(), "seconds": position["seconds"], "loss": position["loss"],
            "history": position["history"], "total_seconds": sum(position["seconds"]), "n_params": cfg.n_params}
