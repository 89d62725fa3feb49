"""The model organisms: building a run from a recipe, training, measuring and writing the card.

- organism-llama: the causal twin, next-token loss (a short pretraining on whole sequences, then SFT
  on the answers);
- organism-dream: masked diffusion with the -1 prediction offset, initialised from organism-llama
  (so it is built after it), then masked-diffusion pretraining and SFT;
- organism-llada: masked diffusion from scratch, a short pretraining then SFT (the answers, and 0..7
  EOS tokens after the query's, masked with ratio t and weighted 1/t; the prompt never masked; the
  query's answer always masked with weight 1, the same expected loss with less variance);
- organism-llada2: a small LLaDA2-style mixture of experts trained as organism-llada (shorter), half of
  its batches under block attention (block diffusion), expert biases balanced after every step.

``pretrain_organism`` is what ``mdlm-interp pretrain`` runs; ``python -m mdlm_interp.training.organisms``
(``make organisms``) rebuilds the shipped ones from ``recipes.ORGANISMS``.
"""

import math
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from mdlm_interp.errors import UsageError
from mdlm_interp.paths import data_dir
from mdlm_interp.training.data import DataConfig
from mdlm_interp.training.pretrain import StageConfig, TrainConfig
from mdlm_interp.training.recipes import ORGANISMS, RECIPES

# pretrain_organism's options in the order a command line names them (None: not given, the recipe's value).
OPTION_ORDER = ("family", "preset", "init", "steps", "sft_steps", "seed", "lr", "sft_lr", "batch_tokens", "threads",
                "eval_every", "eval_prompts", "masks", "dtype", "out")


def build_config(family: str, preset: str, seed: int, steps: int | None = None, sft_steps: int | None = None,
                 init: str | None = None, lr: float | None = None, sft_lr: float | None = None,
                 batch_tokens: int | None = None, threads: int = 1, eval_every: int | None = None) -> TrainConfig:
    """Return the ``TrainConfig`` of ``family``'s recipe, with any given value replacing the recipe's.

    A stage with 0 steps is left out.
    """
    if family not in RECIPES:
        raise UsageError(f"no recipe for family '{family}' (choose from {', '.join(RECIPES)})")
    recipe = RECIPES[family]

    def pick(value, key):
        return recipe[key] if value is None else value

    stages = []
    for name, count, rate in (("pretrain", pick(steps, "steps"), pick(lr, "lr")),
                              ("sft", pick(sft_steps, "sft_steps"), pick(sft_lr, "sft_lr"))):
        if count < 0:
            raise UsageError(f"step counts must be >= 0, got {count} for {name}")
        data = DataConfig(**dict(recipe[name], **({} if batch_tokens is None else {"batch_tokens": batch_tokens})))
        if count:
            stages.append(StageConfig(name, count, rate, data, warmup=min(50, count)))
    if not stages:
        raise UsageError("nothing to train: both --steps and --sft-steps are 0")
    if not 1 <= threads <= 1024:
        raise UsageError(f"--threads must be between 1 and 1024, got {threads}")
    for flag, rate in (("--lr", lr), ("--sft-lr", sft_lr)):
        if rate is not None and not 0 < rate < math.inf:
            raise UsageError(f"{flag} must be a positive learning rate, got {rate}")
    if batch_tokens is not None and batch_tokens < 1:
        raise UsageError(f"--batch-tokens must be at least 1, got {batch_tokens}")
    if eval_every is not None and eval_every < 0:
        raise UsageError(f"--eval-every must be 0 (no evaluation) or more, got {eval_every}")
    return TrainConfig(family=family, preset=preset, seed=seed, stages=tuple(stages), init=init, threads=threads,
                       eval_every=pick(eval_every, "eval_every"), overrides=dict(recipe.get("overrides", {})),
                       block_fraction=recipe.get("block_fraction", 0.0))


def pretrain_command(options: dict) -> str:
    """Return the ``mdlm-interp pretrain`` command line that rebuilds a run of ``pretrain_organism(**options)``
    (given options only, in ``OPTION_ORDER``; ``masks`` written comma-separated)."""
    argv = ["mdlm-interp", "pretrain"]
    for name in OPTION_ORDER:
        value = options.get(name)
        if value is not None:
            argv += ["--" + name.replace("_", "-"), ",".join(map(str, value)) if name == "masks" else str(value)]
    return shlex.join(argv)


def pretrain_organism(family: str, out: str, *, preset: str = "organism", seed: int = 0, init: str | None = None,
                      steps: int | None = None, sft_steps: int | None = None, lr: float | None = None,
                      sft_lr: float | None = None, batch_tokens: int | None = None, threads: int = 1,
                      eval_every: int | None = None, eval_prompts: int = 1000, masks=(1, 5, 10, 20, 50),
                      dtype: str = "float32", resume: bool = False, overwrite: bool = False,
                      progress: bool = True) -> dict:
    """Train ``family``'s recipe (given values replace the recipe's), write the checkpoint to ``out``,
    measure it on ``eval_prompts`` held-out prompts per condition and write its model card.

    An existing non-empty ``out`` is refused unless ``overwrite`` (or ``resume``, which continues from
    ``out/train_state``). The checkpoint and card are built in a staging folder next to ``out`` that
    replaces it only when complete, so ``out`` never holds a mix of two checkpoints, and a failed or
    killed run leaves an old checkpoint whole. Returns ``training.card.measure``'s results. Raises
    ``UsageError`` for bad options before training.
    """
    from mdlm_interp.models.families import SHAPE_PRESETS
    from mdlm_interp.models.loader import parse_dtype
    from mdlm_interp.outputs import check_output_dir, staged_dir
    from mdlm_interp.training.card import measure, write_card
    from mdlm_interp.training.pretrain import train
    from mdlm_interp.training.run_folder import STATE_DIR

    masks = tuple(int(m) for m in masks)
    if not masks or any(m < 1 for m in masks):
        raise UsageError("--masks values must be at least 1 (the first mask is the answer slot)")
    if preset in SHAPE_PRESETS and max(masks) >= SHAPE_PRESETS[preset]["max_seq_len"]:
        raise UsageError(f"--masks {max(masks)} does not fit the {preset} preset's context of "
                         f"{SHAPE_PRESETS[preset]['max_seq_len']} tokens")
    if eval_prompts < 1:
        raise UsageError(f"--eval-prompts must be at least 1, got {eval_prompts}")
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    state = Path(out) / STATE_DIR
    if not (resume or overwrite) and state.is_dir():
        raise UsageError(f"{out} holds an interrupted run ({STATE_DIR}); pass --resume to continue it or "
                         "--overwrite to start again")
    check_output_dir(out, overwrite=overwrite or resume)
    options = dict(family=family, preset=preset, init=init, steps=steps, sft_steps=sft_steps, seed=seed, lr=lr,
                   sft_lr=sft_lr, batch_tokens=batch_tokens, threads=threads, eval_every=eval_every,
                   eval_prompts=eval_prompts, masks=masks, dtype=dtype, out=out)
    config = build_config(family, preset, seed, steps=steps, sft_steps=sft_steps, init=init, lr=lr, sft_lr=sft_lr,
                          batch_tokens=batch_tokens, threads=threads, eval_every=eval_every)
    recipe_init = next((o["init"] for o in ORGANISMS.values() if o["family"] == family and "init" in o), None)
    if recipe_init and not init:  # after every check, so that an error stays one line
        print(f"mdlm-interp: note: {family} without --init trains from random weights (the organism recipe "
              f"starts from {recipe_init})", file=sys.stderr)
    with staged_dir(out) as staging:  # replaces out (old checkpoint and train_state) once complete
        if overwrite:
            shutil.rmtree(state, ignore_errors=True)
        summary = train(config, out, resume=resume, dtype=parse_dtype(dtype), progress=progress,
                        checkpoint_dir=staging)
        print(f"trained {family} in {summary['total_seconds'] / 60:.1f} min; measuring {out}", file=sys.stderr)
        results = measure(staging, masks, eval_prompts)
        write_card(staging, Path(out).name, summary, results, pretrain_command(options), dtype)
    return results


def main() -> int:
    """Rebuild the organisms in data/models; return an exit code.

    Their output paths are relative to the folder holding data/ (the repository root), where this runs.
    """
    os.chdir(data_dir().parent)
    started = time.perf_counter()
    for name, options in ORGANISMS.items():
        print(f"== {name}: {pretrain_command(options)}", file=sys.stderr)
        try:
            pretrain_organism(**options, overwrite=True)
        except UsageError as error:
            print(f"mdlm-interp: error: {error}", file=sys.stderr)
            return 2
    print(f"rebuilt {len(ORGANISMS)} organisms in {(time.perf_counter() - started) / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
