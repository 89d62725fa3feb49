"""CPU against another device: the same logits and the same recorded quantities, within stated tolerances.

    python benchmarks/gpu_agreement.py [--device cuda] [--models organism-llada,organism-dream,medium]
                                       [--dtypes float32,bfloat16]

For each model and dtype the model is loaded twice, on the CPU and on ``--device``, and the same
batch of task prompts (1 and 10 masks) goes through both: the full logits of a plain forward pass, and
``record_batch`` with every recorder (prediction, attention masses, logit lens, embedding gradients).
Each quantity's largest difference is divided by its tolerance; a ratio above 1 fails (exit code 1).
"medium" is a random LLaDA checkpoint of the medium preset (about 30M parameters).

Tolerances (absolute unless said; gradient norms relative to the largest norm of the batch):

| quantity | float32 | bfloat16 |
| --- | --- | --- |
| logits | 1e-3 | 0.5 |
| probabilities (p_answer, top-k probabilities, lens p_answer) | 1e-4 | 0.05 |
| entropies (nats) | 1e-3 | 0.1 |
| attention masses | 1e-4 | 0.02 |
| gradient norms (relative) | 1e-3 | 0.1 |

float32 on a GPU differs from the CPU only in summation order (TF32 is off: torch's default for
matmuls); bfloat16 keeps 8 bits of mantissa, so every layer's rounding can move a logit of size 10 by a
few hundredths. With ``--device cpu`` both sides run on the CPU (a smoke run of the check: ratios 0).
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

TOLERANCES = {  # quantity -> (float32, bfloat16)
    "logits": (1e-3, 0.5),
    "probability": (1e-4, 0.05),
    "entropy": (1e-3, 0.1),
    "attention": (1e-4, 0.02),
    "gradient norms (relative)": (1e-3, 0.1),
}
KIND = {"examples/p_answer": "probability", "examples/topk_probs": "probability", "lens/p_answer": "probability",
        "examples/entropy": "entropy", "lens/entropy": "entropy", "gradients/norms": "gradient norms (relative)"}


def kind_of(path: str) -> str | None:
    """Return the tolerance kind of a store column (None: not compared, e.g. ids and ranks)."""
    if path in KIND:
        return KIND[path]
    return "attention" if path.startswith("attention/") else None


def columns_of(lm, prompts, config) -> dict:
    """Return {"logits": float64 array} plus the float columns of ``record_batch`` for ``prompts`` on ``lm``."""
    from mdlm_interp.batching import collate
    from mdlm_interp.record import record_batch
    from mdlm_interp.subject import subject_from

    subject = subject_from(lm)
    device = next(lm.model.parameters()).device
    batch = collate(prompts, subject.prediction_offset, device=device)
    with torch.no_grad():
        logits = lm.model(batch.input_ids, attention_mask=batch.attention_mask)
    out = {"logits": logits.float().cpu().numpy()[batch.layout.valid.cpu().numpy()]}
    for path, value in record_batch(subject, prompts, config).items():
        if kind_of(path) is not None:
            out[path] = np.concatenate([np.ravel(v) for v in value]) if isinstance(value, list) else value
    return out


def compare(name: str, dtype: str, device: str, models_dir: Path) -> list[dict]:
    """Return one row per quantity: model, dtype, quantity, largest difference, tolerance, ratio."""
    from mdlm_interp import load_model
    from mdlm_interp.plan import plan_prompts
    from mdlm_interp.record import RecordConfig
    from mdlm_interp.subject import subject_from

    source = name
    if name == "medium":
        from mdlm_interp.models.random_checkpoint import write_random_checkpoint
        from mdlm_interp.tasks import tokenizer_corpus

        source = models_dir / "medium"
        if not source.exists():
            write_random_checkpoint("llada", source, tokenizer_corpus(), preset="medium", seed=0)
    config = RecordConfig(tasks=("adjective+largest", "animal+smallest"), masks=(1, 10), n=2, n_relevant=4,
                          n_distractor=8)
    sides = {}
    for side in ("cpu", device):
        lm = load_model(source, device=side, dtype=dtype)
        subject = subject_from(lm)
        prompts = plan_prompts(subject, config, config.rows(config.conditions(subject.causal)))
        sides[side if side == "cpu" else "device"] = columns_of(lm, prompts, config)
        if device == "cpu":
            sides["device"] = columns_of(lm, prompts, config)
            break
    rows = []
    column = 0 if dtype == "float32" else 1
    for path, cpu in sides["cpu"].items():
        other = sides["device"][path]
        kind = "logits" if path == "logits" else kind_of(path)
        difference = float(np.nanmax(np.abs(cpu.astype(np.float64) - other.astype(np.float64)), initial=0.0))
        if kind == "gradient norms (relative)":
            difference /= max(float(np.nanmax(np.abs(cpu), initial=0.0)), 1e-30)
        tolerance = TOLERANCES[kind][column]
        rows.append({"model": name, "dtype": dtype, "quantity": path, "difference": difference,
                     "tolerance": tolerance, "ratio": difference / tolerance})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="the device compared with the CPU (default cuda)")
    parser.add_argument("--models", default="organism-llada,organism-dream,medium",
                        help="comma-separated checkpoints, organism-NAME or 'medium' (default the two organisms "
                        "and medium)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated (default float32,bfloat16)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for dtype in args.dtypes.split(","):
                rows += compare(name, dtype, args.device, Path(tmp))
    print(f"CPU against {args.device}: largest difference / tolerance (a ratio above 1 fails)\n")
    print("| model | dtype | quantity | difference | tolerance | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['model']} | {row['dtype']} | {row['quantity']} | {row['difference']:.3g} | "
              f"{row['tolerance']:g} | {row['ratio']:.3f} |")
    failed = [row for row in rows if not row["ratio"] <= 1]
    print(f"\n{'FAIL' if failed else 'PASS'}: {len(rows) - len(failed)} of {len(rows)} quantities within tolerance")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
