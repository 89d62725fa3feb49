"""The three model organisms and their recipes; ``python -m mdlm_interp.training.organisms`` rebuilds them.

- organism-llama: the causal twin, next-token loss (a short pretraining on whole sequences, then SFT
  on the answers);
- organism-dream: masked diffusion with the -1 prediction offset, initialised from organism-llama
  (so it is built after it), then masked-diffusion pretraining and SFT;
- organism-llada: masked diffusion from scratch, a short pretraining then SFT (the answers, and 0..7
  EOS tokens after the query's, masked with ratio t and weighted 1/t; the prompt never masked; the
  query's answer always masked with weight 1, the same expected loss with less variance).

Each is one ``mdlm-interp pretrain`` command (``COMMANDS``), recorded verbatim in its model card.
"""

import os
import sys
import time
from dataclasses import replace

from mdlm_interp.errors import UsageError
from mdlm_interp.paths import data_dir
from mdlm_interp.training.data import DataConfig
from mdlm_interp.training.pretrain import StageConfig, TrainConfig

RECIPES: dict[str, dict] = {
    "llama": dict(
        steps=100, lr=5e-4, sft_steps=1200, sft_lr=3e-3, eval_every=200,
        pretrain=DataConfig("pretrain", min_examples=0, max_examples=56, curriculum=0.5),
        sft=DataConfig("sft", min_examples=0, max_examples=56, curriculum=0.7),
    ),
    "dream": dict(
        steps=100, lr=3e-4, sft_steps=600, sft_lr=1e-3, eval_every=200,
        pretrain=DataConfig("pretrain", min_examples=0, max_examples=56, curriculum=0.0),
        sft=DataConfig("sft", min_examples=0, max_examples=56, curriculum=0.3),
    ),
    "llada": dict(
        steps=100, lr=5e-4, sft_steps=4000, sft_lr=3e-3, eval_every=250,
        pretrain=DataConfig("pretrain", min_examples=0, max_examples=56, curriculum=0.5),
        sft=DataConfig("sft", min_examples=1, max_examples=56, curriculum=1.0, example_answers=False,
                       answer_always_masked=True, log_uniform_examples=True),
    ),
}

# The order matters: organism-dream starts from organism-llama.
COMMANDS: dict[str, list[str]] = {
    "organism-llama": ["--family", "llama", "--preset", "organism", "--seed", "0", "--out", "data/models/organism-llama"],
    "organism-dream": ["--family", "dream", "--preset", "organism", "--init", "data/models/organism-llama",
                       "--seed", "0", "--out", "data/models/organism-dream"],
    "organism-llada": ["--family", "llada", "--preset", "organism", "--seed", "0", "--out", "data/models/organism-llada"],
}


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
        data = recipe[name] if batch_tokens is None else replace(recipe[name], batch_tokens=batch_tokens)
        if count:
            stages.append(StageConfig(name, count, rate, data, warmup=min(50, count)))
    if not stages:
        raise UsageError("nothing to train: both --steps and --sft-steps are 0")
    if threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    return TrainConfig(family=family, preset=preset, seed=seed, stages=tuple(stages), init=init, threads=threads,
                       eval_every=pick(eval_every, "eval_every"))


def main() -> int:
    """Rebuild the three organisms in data/models; return an exit code.

    The commands' paths are relative to the folder holding data/ (the repository root), where this runs.
    """
    from mdlm_interp.cli import main as cli_main

    os.chdir(data_dir().parent)
    started = time.perf_counter()
    for name, argv in COMMANDS.items():
        print(f"== {name}: mdlm-interp pretrain {' '.join(argv)}", file=sys.stderr)
        code = cli_main(["pretrain", *argv])
        if code:
            return code
    print(f"rebuilt {len(COMMANDS)} organisms in {(time.perf_counter() - started) / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
