"""The card of an MA-loss adapter: README.md and training_curve.png in the adapter's folder.

The card says what the adapter is (base model and its weights fingerprint, loss, LoRA shape), the
exact command that made it, how long it took, the training curves (loss, CE and TV terms from
train_log.csv) and how to use it.
"""

import csv
from pathlib import Path

from mdlm_interp.models.adapter import ADAPTER_WEIGHTS, adapter_fingerprint
from mdlm_interp.training.card import cpu_name

CURVE_FILE = "training_curve.png"
CURVE_ROWS = 10  # rows of the curve table in the card


def read_log(out: Path) -> list[dict]:
    """Return the rows of out/train_log.csv as dicts of floats (step as int)."""
    with open(out / "train_log.csv", newline="") as handle:
        return [{k: int(v) if k == "step" else float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def smoothed(rows: list[dict], key: str, weight: float = 0.98) -> list[float]:
    """Return the exponential moving average of ``key`` over ``rows`` (the progress bar's smoothing)."""
    out, value = [], None
    for row in rows:
        value = row[key] if value is None else weight * value + (1 - weight) * row[key]
        out.append(value)
    return out


def plot_curve(rows: list[dict], path: Path, title: str) -> None:
    """Save the training curves (raw and smoothed loss, CE and TV against the step) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3), dpi=80)
    for ax, key, color in ((axes[0], "ce", "tab:blue"), (axes[1], "tv", "tab:orange")):
        ax.plot(steps, [r[key] for r in rows], color=color, alpha=0.25, linewidth=0.6)
        ax.plot(steps, smoothed(rows, key), color=color, linewidth=1.5)
        ax.set_xlabel("step")
        ax.set_title({"ce": "CE term (1/p weighted)", "tv": "TV term (p weighted)"}[key], fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_adapter_card(out, record: dict, summary: dict) -> None:
    """Write README.md and training_curve.png into the adapter folder ``out``.

    ``record`` is training_config.json's content ({"config", "provenance"}); ``summary`` what the
    training returned (seconds, steps, final running terms, n_trainable, lora_targets).
    """
    out = Path(out)
    config, prov = record["config"], record["provenance"]
    rows = read_log(out)
    loss_name = "CE-only ablation (beta = 0)" if config["beta"] == 0 else "MA loss"
    plot_curve(rows, out / CURVE_FILE, f"{out.name}: {loss_name}, alpha {config['alpha']:g}, beta {config['beta']:g}")
    every = max(1, len(rows) // CURVE_ROWS)
    picked = [i for i in range(len(rows)) if (i + 1) % every == 0 or i == len(rows) - 1]
    smooth = {key: smoothed(rows, key) for key in ("loss", "ce", "tv")}
    curve = [f"| {rows[i]['step']} | {rows[i]['lr']:.2e} | {smooth['loss'][i]:.4f} | {smooth['ce'][i]:.4f} | "
             f"{smooth['tv'][i]:.4f} | {rows[i]['seconds'] / 60:.1f} |" for i in picked]
    size = (out / ADAPTER_WEIGHTS).stat().st_size
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
        f"| LoRA | r {config['lora_r']}, alpha {config['lora_alpha']:g}, on {', '.join(summary['lora_targets'])} |",
        f"| trainable parameters | {summary['n_trainable']:,} |",
        f"| adapter_model.safetensors | {size / 1e3:.0f} kB, `{adapter_fingerprint(out)}` |",
        f"| data | `{prov['data']}`, {prov['n_pairs']} pairs, `{prov['data_fingerprint']}` |",
        f"| prompts | {'in the family chat template' if config['chat'] else 'as they are (no chat template)'} |",
        "",
        "## Training",
        "",
        f"{summary['steps']} steps of {config['batch_size']} pairs x {config['grad_accum']} accumulation, AdamW "
        f"(peak lr {config['lr']:g}, {config['warmup']} warmup steps, cosine to {config['min_lr_ratio']:g}x, weight "
        f"decay {config['weight_decay']:g}, gradient clip {config['grad_clip']:g}), seed {config['seed']}. Each "
        f"pair's response is masked with ratio p in [{config['mask_ratio'][0]:g}, {config['mask_ratio'][1]:g}] "
        f"(stratified; the prompt never), and the two inputs carry l1 != l2 terminal masks drawn from "
        f"{config['extra_masks'][0]}..{config['extra_masks'][1]}.",
        "",
        f"Time: {summary['seconds'] / 60:.1f} min on {config['threads']} thread(s) of {cpu_name()} (a machine "
        f"shared with other jobs). Versions: mdlm-interp {prov['mdlm_interp']}, torch {prov['torch']}, "
        f"peft {prov['peft']}.",
        "",
        f"![training curves]({CURVE_FILE})",
        "",
        "Running averages (EMA 0.98, as on the progress bar):",
        "",
        "| step | lr | loss | CE | TV | minutes |",
        "|---|---|---|---|---|---|",
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
