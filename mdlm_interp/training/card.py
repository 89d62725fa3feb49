"""Measuring a finished organism checkpoint and writing its model card.

The measurement loads the checkpoint exactly as users will (``load_model``, float32, from the
stored weights) and scores ``n_prompts`` held-out prompts (seeds 0..n-1; training draws seeds
>= 1e9) with 10 relevant + 40 distractor examples, greedy, one forward pass, the first mask scored:
for every number of masks and two placements, the relevant block next to the query and
a random mix. Causal models take no masks (their answer is the next token): one row per placement.
"""

import json
import platform
from pathlib import Path

from mdlm_interp.models.families import FAMILIES
from mdlm_interp.training.evaluate import NEXT_TO_QUERY, EvalSetting, loaded_accuracy

PLACEMENTS = (NEXT_TO_QUERY, "random")
DEFAULT_MASKS = (1, 5, 10, 20, 50)
EVAL_SEED_BASE = 0
MIRRORS = {
    "llada": "a masked diffusion model trained from scratch, like LLaDA-8B",
    "llama": "the causal (autoregressive) twin of organism-llada, like Llama-3-8B next to LLaDA",
    "dream": "a masked diffusion model initialised from the causal twin organism-llama, with shifted "
             "predictions (the token at i is read from logits[:, i-1]), like Dream-7B from Qwen2.5-7B",
    "llada2": "a LLaDA2-style mixture of experts (group-limited routing, a shared expert, the first layers dense) "
              "decoded by block diffusion, upcycled from organism-llada and trained in part under block attention",
}


def measure(path: str | Path, masks: tuple[int, ...] = DEFAULT_MASKS, n_prompts: int = 1000) -> dict:
    """Return the accuracy grid of the checkpoint at ``path``.

    ``{"n_prompts", "seed_base", "accuracy": [{"placement", "masks", "accuracy"}]}``; causal
    checkpoints get ``masks`` 1 only.
    """
    from mdlm_interp.models.loader import load_model

    lm = load_model(path)
    rows = []
    for placement in PLACEMENTS:
        for count in (1,) if lm.spec.causal else masks:
            setting = EvalSetting(placement=placement, masks=count)
            rows.append({"placement": placement, "masks": count,
                         "accuracy": loaded_accuracy(lm, setting, n_prompts, EVAL_SEED_BASE)})
    return {"n_prompts": n_prompts, "seed_base": EVAL_SEED_BASE, "n_relevant": 10, "n_distractor": 40,
            "accuracy": rows}


def directory_bytes(path: Path) -> int:
    """Return the total size in bytes of the files directly inside ``path``."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def cpu_name() -> str:
    """Return the CPU model name (from /proc/cpuinfo where available)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def accuracy_table(results: dict) -> list[str]:
    """Return the markdown rows of the accuracy grid: one row per mask count, one column per placement."""
    by = {(r["placement"], r["masks"]): r["accuracy"] for r in results["accuracy"]}
    counts = sorted({r["masks"] for r in results["accuracy"]})
    lines = ["| masks | relevant block next to the query | random placement |", "|---|---|---|"]
    for count in counts:
        cells = [f"{by[(p, count)]:.1%}" if (p, count) in by else "-" for p in PLACEMENTS]
        lines.append(f"| {count} | " + " | ".join(cells) + " |")
    return lines


def write_card(out: str | Path, name: str, summary: dict, results: dict, command: str, dtype: str) -> None:
    """Write README.md (the model card), training_config.json and eval_results.json into ``out``.

    ``summary`` is what ``training.pretrain.train`` returned, ``results`` what ``measure`` returned,
    ``command`` the exact command line that built the checkpoint.
    """
    import torch

    from mdlm_interp import __version__

    out = Path(out)
    config = summary["config"]
    (out / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    training = {
        "command": command, "config": config, "stored_dtype": dtype, "n_params": summary["n_params"],
        "seconds": summary["seconds"], "loss": summary["loss"], "total_seconds": summary["total_seconds"],
        "history": summary["history"], "cpu": cpu_name(),
        "torch": torch.__version__, "mdlm_interp": __version__,
        "train_prompt_seeds": ">= 1000000000", "monitor_prompt_seeds": "500000..",
    }
    (out / "training_config.json").write_text(json.dumps(training, indent=2) + "\n")
    shape = json.loads((out / "config.json").read_text())
    (out / "README.md").unlink(missing_ok=True)
    others = directory_bytes(out)
    text = card_text(name, summary, results, command, dtype, shape, others)
    for _ in range(3):  # the card states the directory size, itself included
        text = card_text(name, summary, results, command, dtype, shape, others + len(text.encode()))
    (out / "README.md").write_text(text)


def card_text(name: str, summary: dict, results: dict, command: str, dtype: str, shape: dict, size: int) -> str:
    """Return the model card (markdown) of an organism whose directory holds ``size`` bytes."""
    config = summary["config"]
    family = config["family"]
    spec = FAMILIES[family]
    causal = spec.causal
    stages = []
    for stage, seconds, loss in zip(config["stages"], summary["seconds"], summary["loss"]):
        data = stage["data"]
        stages.append(f"| {stage['name']} | {objective_text(spec, data)} | {stage['steps']} | "
                      f"{stage['lr']:g} | {data['batch_tokens']} | {examples_text(data)} "
                      f"| {seconds / 60:.1f} min | {loss if loss is None else round(loss, 3)} |")
    curve = [f"| {h['stage']} | {h['step']} | {h['loss']:.3f} | {h['accuracy']:.1%} |" for h in summary["history"]]
    lines = [
        f"# {name}",
        "",
        f"A model organism of mdlm-interp: {MIRRORS[family]}. It was trained on this repository's",
        "few-shot rule-induction task suite (mdlm_interp.tasks) with the word-level organism tokenizer",
        "(mdlm_interp.training.vocab), on CPU, so that every analysis of the toolkit shows real effects offline.",
        "",
        "## Rebuild",
        "",
        "    " + command,
        "",
        "(`make organisms` rebuilds all three; the same seed on the same thread count gives the same weights, bitwise, on CPU.)",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| family | {family} ({'causal' if causal else 'bidirectional'}, prediction for token i read at "
        f"logits[:, i{spec.prediction_offset or ''}]) |",
        f"| parameters | {summary['n_params']:,} |",
        f"| shape | {config_shape(shape, spec)} |",
        f"| weights | model.safetensors, {dtype} (load in float32) |",
        f"| size on disk | {size / 1e6:.2f} MB (this directory) |",
        "",
        "## Training",
        "",
        "| stage | objective | steps | peak lr | tokens per batch | examples per prompt | time | final loss (EMA) |",
        "|---|---|---|---|---|---|---|---|",
        *stages,
        "",
        f"Total training time: {summary['total_seconds'] / 60:.1f} min on {config['threads']} thread(s) of "
        f"{cpu_name()} (a machine shared with other jobs, so times vary). "
        + (f"Initialised from `{config['init']}`, q/k/v biases set to zero. " if config.get("init") else "")
        + "Every batch is freshly sampled from the task suite (prompt seeds >= 1e9): varied numbers of "
        "examples and relevant examples, random mix / relevant block at a random slot"
        + ("" if causal else " / query at a random slot") + ", with or without a leading BOS; the largest number of "
        "examples (and of EOS tokens after the answer) grows over the first part of each stage (curriculum, "
        "in the table). "
        "SFT reads a prompt as a multi-turn conversation whose responses are the answers.",
        "",
        "Held-out accuracy during training (200 prompts, seeds 500000.., 10 relevant + 40 distractor, "
        "relevant block next to the query, one mask):",
        "",
        "| stage | step | loss (EMA) | accuracy |",
        "|---|---|---|---|",
        *curve,
        "",
        f"## Accuracy ({results['n_prompts']} held-out prompts)",
        "",
        f"Prompts i = 0..{results['n_prompts'] - 1}: task i mod 16, seed i (never used in training), "
        "10 relevant + 40 distractor examples, greedy prediction from one forward pass, only the answer "
        "slot (the first mask) scored. Chance is 1/3 (three candidate words)."
        + (" The causal twin takes no masks: its answer is the next token." if causal else ""),
        "",
        *accuracy_table(results),
        "",
        "## Use",
        "",
        "    from mdlm_interp import load_model",
        f"    lm = load_model(\"{name}\")",
        "",
    ]
    return "\n".join(lines)


def examples_text(data: dict) -> str:
    """Return how a stage draws the number of examples per prompt (``data`` is its DataConfig as a dict)."""
    spread = ", log-uniform" if data.get("log_uniform_examples") else ""
    ramp = f", cap grows over the first {data['curriculum']:.0%}" if data["curriculum"] > 0 else ""
    return f"{data['min_examples']}..{data['max_examples']}{spread}{ramp}"


def objective_text(spec, data: dict) -> str:
    """Return a short description of a stage's loss for the card (``spec`` the family's FamilySpec,
    ``data`` the stage's DataConfig as a dict)."""
    turns = "every example's answer and the query's" if data["example_answers"] else "the query's answer"
    if spec.causal:
        return "next-token CE" + (f" on {turns}" if data["objective"] == "sft" else " on every token")
    shift = f", {spec.prediction_offset} offset" if spec.prediction_offset else ""
    if data["objective"] == "sft":
        always = "; the query's answer always masked, weight 1" if data["answer_always_masked"] else ""
        return (f"masked diffusion on the responses ({turns}, then 0..{data['max_extra']} EOS) with ratio t, "
                f"1/t weights, prompt never masked{always}{shift}")
    return f"masked diffusion on every token, ratio t, 1/t weights{shift}"


def config_shape(config: dict, spec) -> str:
    """Return a one-line shape description from a checkpoint's config.json (``spec`` its FamilySpec)."""
    cfg = spec.decoder_config(config)
    return (f"{cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, d_mlp {cfg.d_mlp}, "
            f"vocabulary {config['vocab_size']}")
