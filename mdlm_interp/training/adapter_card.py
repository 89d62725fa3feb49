"""The card of an MA-loss adapter: README.md and training_curve.png in the adapter's folder.

The card says what the adapter is (base model and its weights fingerprint, loss, LoRA shape), the
exact command that made it, how long it took, the training curves (loss, CE and TV terms from
train_log.csv) and how to use it. ``python -m mdlm_interp.training.adapter_card DIR`` rebuilds it.
"""

import csv
import math
from pathlib import Path

from safetensors import safe_open

from mdlm_interp.models.adapter import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    TRAINING_CONFIG,
    adapter_fingerprint,
    file_sha256,
)
from mdlm_interp.training.card import cpu_name

CURVE_FILE = "training_curve.png"
CURVE_ROWS = 10  # windows of steps in the card's table and plot


def read_log(out: Path) -> list[dict]:
    """Return the rows of out/train_log.csv as dicts of floats (step as int)."""
    with open(out / "train_log.csv", newline="") as handle:
        return [{k: int(v) if k == "step" else float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def window_means(rows: list[dict], key: str, windows: int = CURVE_ROWS) -> list[tuple[int, int, float]]:
    """Return (first step, last step, mean of ``key``) over ``windows`` consecutive equal runs of steps."""
    size = max(1, -(-len(rows) // windows))
    return [(chunk[0]["step"], chunk[-1]["step"], sum(r[key] for r in chunk) / len(chunk))
            for chunk in (rows[i:i + size] for i in range(0, len(rows), size))]


def plot_curve(rows: list[dict], path: Path, title: str, tv_trained: bool = True) -> None:
    """Save the training curves (per-step CE and TV terms, and their means over windows of steps) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3), dpi=80)
    for ax, key, color in ((axes[0], "ce", "tab:blue"), (axes[1], "tv", "tab:orange")):
        ax.plot(steps, [r[key] for r in rows], color=color, alpha=0.3, linewidth=0.6, label="per step")
        windows = window_means(rows, key)
        ax.hlines([w[2] for w in windows], [w[0] for w in windows], [w[1] for w in windows], color=color,
                  linewidth=2, label=f"mean over {windows[0][1] - windows[0][0] + 1} steps")
        ax.set_xlabel("step")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_title({"ce": "CE term (1/p weighted)",
                      "tv": "TV term (p weighted)" + ("" if tv_trained else ", measured, not trained")}[key],
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_adapter_card(out) -> None:
    """Write README.md and training_curve.png into the finished adapter folder ``out``, from its
    training_config.json, train_log.csv and adapter files (so a card can be rebuilt at any time)."""
    import json

    out = Path(out)
    record = json.loads((out / TRAINING_CONFIG).read_text())
    config, prov = record["config"], record["provenance"]
    targets = json.loads((out / ADAPTER_CONFIG).read_text())["target_modules"]
    rows = read_log(out)
    loss_name = "CE-only ablation (beta = 0)" if config["beta"] == 0 else "MA loss"
    plot_curve(rows, out / CURVE_FILE, f"{out.name}: {loss_name}, alpha {config['alpha']:g}, beta {config['beta']:g}",
               tv_trained=config["beta"] != 0)
    means = {key: window_means(rows, key) for key in ("loss", "ce", "tv")}
    curve = [f"| {first}-{last} | {loss:.4f} | {ce:.4f} | {tv:.4f} |" for (first, last, loss), (_, _, ce), (_, _, tv)
             in zip(means["loss"], means["ce"], means["tv"])]
    size = (out / ADAPTER_WEIGHTS).stat().st_size
    with safe_open(str(out / ADAPTER_WEIGHTS), "pt") as handle:
        n_trainable = sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    lines = [
        f"# {out.name}",
        "",
        f"A LoRA adapter (peft format) for `{prov['base_model']}` ({prov['family']}, weights "
        f"`{prov['base_weights_fingerprint']}`), fine-tuned with the {loss_name} of \"Masks Can Be Distracting\" "
        f"(L = {config['alpha']:g} L_CE + {config['beta']:g} L_TV) by mdlm-interp.",
        "",
        "## Rebuild",
        "",
        "    " + prov["command_line"],
        "",
        "(the same seed on the same thread count gives the same adapter, bitwise, on CPU)",
        "",
        "## Adapter",
        "",
        "| | |",
        "|---|---|",
        f"| LoRA | r {config['lora_r']}, alpha {config['lora_alpha']:g}, on {', '.join(sorted(targets))} |",
        f"| trainable parameters | {n_trainable:,} |",
        f"| adapter_model.safetensors | {size / 1e3:.0f} kB, `sha256:{file_sha256(out / ADAPTER_WEIGHTS)}` |",
        f"| identity (weights and adapter_config.json) | `{adapter_fingerprint(out)}` |",
        f"| data | `{prov['data']}`, {prov['n_pairs']} pairs, `{prov['data_fingerprint']}` |",
        f"| prompts | {'in the family chat template' if config['chat'] else 'as they are (no chat template)'} |",
        "",
        "## Training",
        "",
        f"{config['steps']} steps of {config['batch_size']} pairs x {config['grad_accum']} accumulation, AdamW "
        f"(peak lr {config['lr']:g}, {config['warmup']} warmup steps, cosine to {config['min_lr_ratio']:g}x, weight "
        f"decay {config['weight_decay']:g}, gradient clip {config['grad_clip']:g}), seed {config['seed']}. Each "
        f"pair's response is masked with ratio p in [{config['mask_ratio'][0]:g}, {config['mask_ratio'][1]:g}] "
        f"(stratified; the prompt never), and the two inputs carry l1 != l2 terminal masks drawn from "
        f"{config['extra_masks'][0]}..{config['extra_masks'][1]}.",
        "",
        f"Time: {rows[-1]['seconds'] / 60:.1f} min wall clock, {rows[-1]['cpu_seconds'] / 60:.1f} min of CPU time, "
        f"on {config['threads']} thread(s) of {cpu_name()} (a machine shared with other jobs). Versions: "
        f"mdlm-interp {prov['mdlm_interp']}, torch {prov['torch']}, peft {prov['peft']}.",
        "",
        f"![training curves]({CURVE_FILE})",
        "",
        "Mean loss terms per window of steps (train_log.csv has every step; the 1/p weight makes single steps "
        "spiky)" + ("; with beta = 0 the TV term is measured, not trained:" if config["beta"] == 0 else ":"),
        "",
        "| steps | loss | CE | TV |",
        "|---|---|---|---|",
        *curve,
        "",
        "## Use",
        "",
        "    from mdlm_interp import load_model",
        f"    lm = load_model(\"{prov['base_model']}\", adapter=\"{out}\")          # merge_adapter=True folds it in",
        f"    mdlm-interp record --model {prov['base_model']} --adapter {out} --masks 1,50 --out after.h5",
        "",
        "or with peft directly: `peft.PeftModel.from_pretrained(load_model(base).model, DIR)`.",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


if __name__ == "__main__":
    import sys

    for folder in sys.argv[1:]:
        write_adapter_card(folder)
