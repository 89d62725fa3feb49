"""Iterative against one-step accuracy, against the number of masks and of steps, from stores with a
``decode`` group (``record --decode``).

One-step accuracy is ``examples/correct`` (the answer slot read from one forward pass with n masks);
iterative accuracy is ``decode/correct`` (the same prompt decoded step by step). Both come from the
same rows, so their difference is paired. Per condition the tables also give when the answer settles
(``decode/settle_step``: from that step on the prediction for the answer slot no longer changes) and
when it is unmasked, and per step the prediction's p(answer), the masks left and the attention the
answer readout pays them. Accuracies carry Wilson 95% intervals, means and paired differences a
seeded percentile bootstrap over rows (2000 resamples, seed 0).
"""

from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
Z95 = 1.959963984540054
CONDITION = ["model", "decoder", "n_relevant", "n_distractor", "placement", "filler", "masks", "steps"]


@dataclass
class DecodeRecordings:
    """Rows of stores with a decode group: ``rows`` (pandas DataFrame: CONDITION columns, task, correct,
    decoded_correct, unmask_step, settle_step; ``decoder`` names the sampler and its settings but the
    steps, e.g. "llada block=masks cfg=0.0") and ``per_step`` (name -> array [rows, steps]:
    p_answer, masks_left, mask_attention = decode/mask_mass_from_answer averaged over layers and heads),
    aligned with ``rows``; per-step arrays are NaN past a row's steps."""

    rows: object
    per_step: dict


def load_decode(paths) -> DecodeRecordings:
    """Return the ``DecodeRecordings`` of the stores at ``paths`` (stores without a decode group are skipped;
    ``UsageError`` if none has one). The model label is the store's model_id."""
    import pandas as pd

    from mdlm_interp.errors import UsageError
    from mdlm_interp.store import open_store

    frames, arrays = [], []
    for path in paths:
        with open_store(path) as store:
            if "decode" not in store.groups:
                continue
            settings = store.attrs["settings"]
            frame = store.examples[["task", "placement", "filler", "masks", "correct"]].copy()
            frame.insert(0, "model", str(store.attrs["model_id"]))
            frame.insert(1, "decoder", decoder_label(settings["decode"]))
            frame.insert(2, "n_relevant", int(settings["n_relevant"]))
            frame.insert(3, "n_distractor", int(settings["n_distractor"]))
            decode = store.decode
            for column, name in [("decoded_correct", "correct"), ("steps", "steps"), ("unmask_step", "unmask_step"),
                                 ("settle_step", "settle_step")]:
                frame[column] = decode[name]
            frames.append(frame)
            arrays.append({"p_answer": decode["step_p_answer"].astype(float),
                           "masks_left": np.where(decode["masks_left"] < 0, np.nan, decode["masks_left"]),
                           "mask_attention": decode["mask_mass_from_answer"].astype(float).mean(axis=(2, 3))})
    if not frames:
        raise UsageError("no store has a decode group (record with --decode)")
    width = max(a["p_answer"].shape[1] for a in arrays)
    padded = {name: np.concatenate([np.pad(a[name], ((0, 0), (0, width - a[name].shape[1])), constant_values=np.nan)
                                    for a in arrays]) for name in arrays[0]}
    return DecodeRecordings(pd.concat(frames, ignore_index=True), padded)


def decoder_label(decode: dict) -> str:
    """Return a store's ``settings["decode"]`` without its steps as one label, e.g. "dream alg=entropy eps=0.001"."""
    options = " ".join(f"{key}={'masks' if value is None else value}" for key, value in sorted(decode.items())
                       if key not in ("sampler", "steps"))
    return f"{decode['sampler']} {options}".strip()


def wilson(successes, n) -> tuple[float, float]:
    """Return the Wilson score 95% interval (low, high) of ``successes`` out of ``n`` (NaN when n is 0)."""
    if n == 0:
        return np.nan, np.nan
    p, z2n = successes / n, Z95**2 / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = Z95 * np.sqrt(p * (1 - p) / n + z2n / (4 * n)) / (1 + z2n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean(values) -> tuple[float, float, float]:
    """Return (mean, low, high) of ``values`` (NaN dropped) with a 95% percentile bootstrap interval."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return np.nan, np.nan, np.nan
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = rng.multinomial(len(values), np.full(len(values), 1 / len(values)), size=BOOTSTRAP_RESAMPLES) @ values
    low, high = np.percentile(means / len(values), [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


def iterative_accuracy(recordings: DecodeRecordings):
    """Return one row per condition (CONDITION columns: masks and steps among them; tasks pooled): n,
    one-step and iterative accuracy with Wilson bounds (``*_low``, ``*_high``), their paired difference ``gain`` (iterative -
    one-step, bootstrap bounds), and the mean settle and unmask steps, also as fractions of the steps,
    with bootstrap bounds; ``answer_last`` is the share of rows whose answer slot was unmasked last."""
    import pandas as pd

    out = []
    for keys, group in recordings.rows.groupby(CONDITION, sort=True):
        n = len(group)
        one, iterative = group["correct"].to_numpy(bool), group["decoded_correct"].to_numpy(bool)
        steps = group["steps"].to_numpy(float)
        row = dict(zip(CONDITION, keys), n=n)
        for name, values in (("one_step", one), ("iterative", iterative)):
            row[f"{name}_accuracy"] = values.mean()
            row[f"{name}_low"], row[f"{name}_high"] = wilson(values.sum(), n)
        row["gain"], row["gain_low"], row["gain_high"] = bootstrap_mean(iterative.astype(float) - one)
        for name in ("settle_step", "unmask_step"):
            values = group[name].to_numpy(float)
            values[values < 0] = np.nan
            row[name], row[f"{name}_low"], row[f"{name}_high"] = bootstrap_mean(values)
            fraction = name.replace("_step", "_fraction")
            row[fraction], row[f"{fraction}_low"], row[f"{fraction}_high"] = bootstrap_mean(values / steps)
        row["answer_last"] = float((group["unmask_step"].to_numpy() == steps - 1).mean())
        out.append(row)
    return pd.DataFrame(out)


def decode_trajectory(recordings: DecodeRecordings):
    """Return one row per (condition, step): n_masked (rows whose answer slot is still masked in the step's
    input), p_answer (mean over those rows, bootstrap bounds), masks_left (mean) and mask_attention (the
    answer readout's attention to the masks left, averaged over layers and heads, then rows; bootstrap
    bounds)."""
    import pandas as pd

    out = []
    for keys, group in recordings.rows.groupby(CONDITION, sort=True):
        index = group.index.to_numpy()
        steps = int(group["steps"].max())
        for step in range(steps):
            p_answer = recordings.per_step["p_answer"][index, step]
            row = dict(zip(CONDITION, keys), step=step, step_fraction=(step + 1) / steps,
                       n_masked=int((~np.isnan(p_answer)).sum()))
            row["p_answer"], row["p_answer_low"], row["p_answer_high"] = bootstrap_mean(p_answer)
            row["masks_left"] = float(np.nanmean(recordings.per_step["masks_left"][index, step]))
            attention = recordings.per_step["mask_attention"][index, step]
            row["mask_attention"], row["mask_attention_low"], row["mask_attention_high"] = bootstrap_mean(attention)
            out.append(row)
    return pd.DataFrame(out)


def steps_rule(frame):
    """Return, per row of a table, how its steps relate to its masks: "steps = masks" or "K steps"."""
    return ["steps = masks" if steps == masks else f"{steps} steps" for steps, masks in zip(frame["steps"], frame["masks"])]


def figure_iterative(accuracy, trajectory, model: str, decoder: str, placement: str):
    """Return a matplotlib Figure for one model, decoder and placement (no filler): accuracy against masks,
    one step and iterative (one line per steps rule, "steps = masks" or a fixed count) with 95% bands;
    settle and unmask steps as fractions of the steps; p(answer) and the attention to the masks left
    across the steps, one line per mask count (for the first steps rule)."""
    from matplotlib.figure import Figure

    def pick(frame):
        keep = (frame["model"] == model) & (frame["decoder"] == decoder) & (frame["placement"] == placement)
        frame = frame[keep & ~frame["filler"]]
        return frame.assign(rule=steps_rule(frame))

    accuracy, trajectory = pick(accuracy), pick(trajectory)
    rules = sorted(accuracy["rule"].unique(), key=lambda rule: (rule != "steps = masks", rule))
    figure = Figure(figsize=(17, 3.6), layout="constrained")
    axes = figure.subplots(1, 4)
    one_step = accuracy.drop_duplicates("masks").sort_values("masks")
    axes[0].plot(one_step["masks"], one_step["one_step_accuracy"], marker="o", color="#d62728", label="one step")
    axes[0].fill_between(one_step["masks"], one_step["one_step_low"], one_step["one_step_high"], color="#d62728",
                         alpha=0.15)
    for rule, color in zip(rules, ["#1f77b4", "#17becf", "#9467bd", "#8c564b"] * 4):
        lines = accuracy[accuracy["rule"] == rule].sort_values("masks")
        axes[0].plot(lines["masks"], lines["iterative_accuracy"], marker="o", color=color, label=f"iterative, {rule}")
        axes[0].fill_between(lines["masks"], lines["iterative_low"], lines["iterative_high"], color=color, alpha=0.15)
    axes[0].set(xlabel="masks (answer slot + masks after it)", ylabel="accuracy", ylim=(-0.02, 1.02))
    axes[0].legend(fontsize=8)
    accuracy = accuracy[accuracy["rule"] == rules[0]].sort_values("masks")
    trajectory = trajectory[trajectory["rule"] == rules[0]]
    masks = accuracy["masks"].to_numpy()
    for name, label, color in (("settle_fraction", "answer settles", "#2ca02c"),
                               ("unmask_fraction", "answer slot unmasked", "#9467bd")):
        axes[1].plot(masks, accuracy[name], marker="o", color=color, label=label)
        axes[1].fill_between(masks, accuracy[f"{name}_low"], accuracy[f"{name}_high"], color=color, alpha=0.15)
    axes[1].set(xlabel=f"masks ({rules[0]})", ylabel="step / steps", ylim=(-0.02, 1.02))
    axes[1].legend(fontsize=8)
    colors = _ramp(len(masks))
    for color, count in zip(colors, masks):
        lines = trajectory[trajectory["masks"] == count]
        for ax, column in ((axes[2], "p_answer"), (axes[3], "mask_attention")):
            ax.plot(lines["step_fraction"], lines[column], color=color, label=f"{count} masks")
            ax.fill_between(lines["step_fraction"], lines[f"{column}_low"], lines[f"{column}_high"], color=color,
                            alpha=0.12)
    axes[2].set(xlabel="step / steps", ylabel="p(answer) while the slot is masked", ylim=(-0.02, 1.02))
    axes[3].set(xlabel="step / steps", ylabel="answer's attention to the masks left")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    figure.suptitle(f"{model}, {decoder}, placement {placement}: iterative against one-step decoding")
    return figure


def _ramp(n: int) -> list:
    from matplotlib import colormaps

    return [colormaps["viridis"](x) for x in np.linspace(0.0, 0.9, max(n, 1))]
