"""Iterative against one-step decoding, against the number of masks and of steps (stores recorded with
``record --decode``).

One-step accuracy is ``examples/correct`` (the answer slot read from one forward pass with n masks);
iterative accuracy is ``decode/correct`` (the same input decoded step by step by the store's sampler),
so the two are paired row by row. Per condition the tables also give when the answer settles
(``decode/settle_step``: from that step on the prediction for the answer slot no longer changes) and
when its slot is unmasked, and per step the prediction's p(answer), the masks left and the attention
the answer readout pays them.
"""

import numpy as np

from mdlm_interp.analyses.data import PAIR, SETTING, Skip, prompt_keys
from mdlm_interp.analyses.grouped import ci, clean_types, masks_text, slug
from mdlm_interp.analyses.plotting import figure_title, line_with_band, masks_axis, model_colors, new_figure
from mdlm_interp.analyses.registry import Analysis, FigureOut
from mdlm_interp.analyses.stats import bootstrap_mean, wilson_interval

KEYS = SETTING + ["decoder", "placement", "filler", "masks", "steps"]
DECODE_COLUMNS = {"decoded_correct": "decode/correct", "steps": "decode/steps", "unmask_step": "decode/unmask_step",
                  "settle_step": "decode/settle_step"}


def decoder_label(decode: dict) -> str:
    """Return a store's ``settings["decode"]`` without its steps as one label, e.g. "dream alg=entropy eps=0.001"."""
    options = " ".join(f"{key}={'masks' if value is None else value}" for key, value in sorted(decode.items())
                       if key not in ("sampler", "steps"))
    return f"{decode['sampler']} {options}".strip()


def decode_rows(recordings):
    """Return one row per decoded row of every store with a decode group: the store's /examples columns,
    store, row_in_store, SETTING, pair, decoder (the store's sampler settings but the steps) and
    decoded_correct, steps, unmask_step, settle_step.

    Read here rather than from ``recordings.rows``, whose duplicates are dropped by prompt and condition
    alone: the same prompts decoded with other settings are other rows here. Rows decoded twice with the
    same settings count once (with a note).
    """
    import pandas as pd

    from mdlm_interp.store import open_store

    frames = []
    for index, info in enumerate(recordings.stores):
        if "decode" not in info.groups:
            continue
        with open_store(info.path) as store:
            frame = store.examples.copy()
            settings = store.attrs["settings"]
        n = int(settings.get("n", 0)) or max(1, int(frame["example"].max()) + 1)
        frame = frame.assign(store=index, row_in_store=np.arange(len(frame)), model=info.model,
                             n_relevant=info.n_relevant, n_distractor=info.n_distractor,
                             decoder=decoder_label(settings["decode"]))
        frame[PAIR] = prompt_keys(info.seed, frame["task"], frame["example"], n)
        for column, name in DECODE_COLUMNS.items():
            frame[column] = recordings.store_array(index, name)
        frames.append(frame)
    if not frames:
        raise Skip("no store recorded /decode")
    rows = pd.concat(frames, ignore_index=True)
    duplicated = rows.duplicated(subset=KEYS + [PAIR], keep="first")
    if duplicated.any():
        note = (f"{int(duplicated.sum())} rows decoded twice (same model, setting, decoder, condition and prompt in "
                "two stores) were counted once.")
        if note not in recordings.notes:
            recordings.notes.append(note)
    return rows[~duplicated].reset_index(drop=True)


def steps_rule(steps, masks) -> str:
    """Return how a condition's steps relate to its masks: "steps = masks" or "K steps"."""
    return "steps = masks" if steps == masks else f"{steps} steps"


def iterative_accuracy(recordings):
    """Return one row per condition (KEYS, masks and steps among them; tasks pooled): n, one-step and
    iterative accuracy with Wilson bounds (``*_low``, ``*_high``), their paired difference ``gain``
    (iterative - one-step, bootstrap over rows), the mean settle and unmask steps and their fractions of
    the steps (bootstrap bounds), and ``answer_last``, the share of rows whose slot was unmasked last."""
    import pandas as pd

    out = []
    for keys, group in decode_rows(recordings).groupby(KEYS, sort=True):
        n = len(group)
        one, iterative = group["correct"].to_numpy(bool), group["decoded_correct"].to_numpy(bool)
        steps = group["steps"].to_numpy(float)
        row = {**dict(zip(KEYS, keys)), "n": n}
        for name, values in (("one_step", one), ("iterative", iterative)):
            low, high = wilson_interval(values.sum(), n)
            row[f"{name}_accuracy"], row[f"{name}_low"], row[f"{name}_high"] = values.mean(), float(low), float(high)
        row["gain"], row["gain_low"], row["gain_high"] = bootstrap_mean(iterative.astype(float) - one)
        for name in ("settle_step", "unmask_step"):
            values = np.where(group[name].to_numpy() < 0, np.nan, group[name].to_numpy(float))
            row[name], row[f"{name}_low"], row[f"{name}_high"] = bootstrap_mean(values)
            fraction = name.replace("_step", "_fraction")
            row[fraction], row[f"{fraction}_low"], row[f"{fraction}_high"] = bootstrap_mean(values / steps)
        row["answer_last"] = float((group["unmask_step"].to_numpy() == steps - 1).mean())
        out.append(row)
    return clean_types(pd.DataFrame(out))


def decode_trajectory(recordings):
    """Return one row per (condition, step): step_fraction ((step + 1) / steps), n_masked (rows whose slot
    is still masked in the step's input), p_answer (mean over those rows), masks_left (mean) and
    mask_attention (the answer readout's attention to the masks left, averaged over layers and heads,
    then rows), with bootstrap bounds."""
    import pandas as pd

    out = []
    for keys, group in decode_rows(recordings).groupby(KEYS, sort=True):
        steps = int(keys[KEYS.index("steps")])
        p_answer = recordings.gather(group, "decode/step_p_answer").astype(float)[:, :steps]
        masks_left = recordings.gather(group, "decode/masks_left")[:, :steps].astype(float)
        attention = recordings.gather(group, "decode/mask_mass_from_answer").astype(float)[:, :steps].mean(axis=(2, 3))
        for step in range(steps):
            row = {**dict(zip(KEYS, keys)), "step": step, "step_fraction": (step + 1) / steps,
                   "n_masked": int((~np.isnan(p_answer[:, step])).sum()), "masks_left": masks_left[:, step].mean()}
            row["p_answer"], row["p_answer_low"], row["p_answer_high"] = bootstrap_mean(p_answer[:, step])
            row["mask_attention"], row["mask_attention_low"], row["mask_attention_high"] = \
                bootstrap_mean(attention[:, step])
            out.append(row)
    return clean_types(pd.DataFrame(out))


def tables(recordings) -> dict:
    """Return {"iterative_accuracy", "decode_trajectory"}."""
    return {"iterative_accuracy": iterative_accuracy(recordings), "decode_trajectory": decode_trajectory(recordings)}


def figures(tables: dict) -> list:
    """Per setting and placement: accuracy (one step, iterative) and settle / unmask step against masks, a
    colour per model; per model and decoder: p(answer) and attention to the masks left across the steps."""
    accuracy = tables["iterative_accuracy"]
    accuracy = accuracy[~accuracy["filler"]].assign(rule=lambda f: [steps_rule(s, m) for s, m in zip(f["steps"],
                                                                                                       f["masks"])])
    trajectory = tables["decode_trajectory"]
    trajectory = trajectory[~trajectory["filler"]]
    out = []
    for (n_relevant, n_distractor, placement), setting in accuracy.groupby(["n_relevant", "n_distractor", "placement"]):
        out.append(figure_accuracy(setting, n_relevant, n_distractor, placement))
        for (model, decoder), lines in trajectory[(trajectory["n_relevant"] == n_relevant)
                                                  & (trajectory["n_distractor"] == n_distractor)
                                                  & (trajectory["placement"] == placement)].groupby(["model", "decoder"]):
            out.append(figure_trajectory(lines, model, decoder, n_relevant, n_distractor, placement))
    return out


def figure_accuracy(setting, n_relevant: int, n_distractor: int, placement: str) -> FigureOut:
    """One-step (dashed) and iterative accuracy against masks, and when the answer settles and its slot is
    unmasked (fractions of the steps), one colour per model and decoder (and steps rule, when several)."""
    labels = {key: " ".join(str(k) for k in key if k) for key in setting[["model", "decoder"]].itertuples(index=False)}
    colors = model_colors(dict.fromkeys(labels.values()))
    several_rules = setting["rule"].nunique() > 1
    figure, axes = new_figure(1, 2, width=5.2, height=3.6)
    for (model, decoder, rule), lines in setting.groupby(["model", "decoder", "rule"], sort=False):
        lines = lines.sort_values("masks")
        label = labels[(model, decoder)] + (f", {rule}" if several_rules else "")
        color = colors[labels[(model, decoder)]]
        line_with_band(axes[0, 0], lines["masks"], lines["iterative_accuracy"], lines["iterative_low"],
                       lines["iterative_high"], color, label=f"{label}: iterative")
        line_with_band(axes[0, 0], lines["masks"], lines["one_step_accuracy"], lines["one_step_low"],
                       lines["one_step_high"], color, style="--", marker="s", label=f"{label}: one step")
        line_with_band(axes[0, 1], lines["masks"], lines["settle_fraction"], lines["settle_fraction_low"],
                       lines["settle_fraction_high"], color, label=f"{label}: answer settles")
        line_with_band(axes[0, 1], lines["masks"], lines["unmask_fraction"], lines["unmask_fraction_low"],
                       lines["unmask_fraction_high"], color, style=":", marker="^", label=f"{label}: slot unmasked")
    for ax, ylabel in zip(axes[0], ("accuracy", "step / steps")):
        masks_axis(ax, setting["masks"])
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    figure.suptitle(figure_title(setting["model"], "iterative against one-step decoding", n_relevant, n_distractor,
                                 placement, setting["n"]), fontsize=10)
    caption = (f"Left: accuracy at the answer slot against the number of masks, read from one forward pass (dashed) "
               f"and after decoding the masks step by step with the store's sampler (solid; {n_relevant} relevant + "
               f"{n_distractor} distractor examples, {placement}; Wilson 95% bands). Right: the step from which the "
               f"prediction for the answer slot no longer changes (solid) and the step its slot is unmasked (dotted), "
               f"as fractions of the steps, with bootstrap 95% bands.")
    return FigureOut(f"iterative_r{n_relevant}_d{n_distractor}_{slug(placement)}", figure, caption)


def figure_trajectory(lines, model: str, decoder: str, n_relevant: int, n_distractor: int, placement: str) -> FigureOut:
    """p(answer) at the answer slot and the answer readout's attention to the masks left across the steps,
    one line per mask count (and steps rule)."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    where = f"{n_relevant} relevant + {n_distractor} distractor, {placement}"
    figure, axes = new_figure(1, 2, width=5.2, height=3.6)
    conditions = list(lines.groupby(["masks", "steps"]).groups)
    for index, ((masks, steps), curve) in enumerate(lines.groupby(["masks", "steps"])):
        color = cmap(index / max(len(conditions) - 1, 1))
        label = masks_text(masks) + ("" if steps == masks else f", {steps} steps")
        for ax, column in zip(axes[0], ("p_answer", "mask_attention")):
            line_with_band(ax, curve["step_fraction"], curve[column], curve[f"{column}_low"], curve[f"{column}_high"],
                           color, label=label, marker="")
    axes[0, 0].set(xlabel="step / steps", ylabel="p(answer) while the slot is masked", ylim=(-0.02, 1.02))
    axes[0, 1].set(xlabel="step / steps", ylabel="attention to the masks left")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    figure.suptitle(figure_title([model], f"the answer slot across the steps of {decoder}", n_relevant, n_distractor,
                                 placement, lines.groupby(["masks", "steps"])["n_masked"].max()), fontsize=10)
    caption = (f"{model} decoded by {decoder} ({where}): p(answer) in the prediction for the answer slot while it is "
               f"still masked (left) and the attention from the answer readout position to the masks still left, "
               f"averaged over layers and heads (right), against the fraction of the steps done, one line per mask "
               f"count; bootstrap 95% bands.")
    name = f"decode_trajectory_{slug(model)}_{decoder.replace(' ', '_').replace('=', '-')}"
    return FigureOut(f"{name}_r{n_relevant}_d{n_distractor}_{slug(placement)}", figure, caption)


def paragraph(tables: dict) -> str:
    """Per model, decoder, setting and placement: one-step against iterative accuracy at the fewest and the
    most masks, the gain, and when the answer settles."""
    frame = tables["iterative_accuracy"]
    parts = []
    for (model, decoder, n_relevant, n_distractor, placement), group in frame[~frame["filler"]].groupby(
            ["model", "decoder", "n_relevant", "n_distractor", "placement"], sort=False):
        group = group.sort_values(["masks", "steps"])
        low, high = group.iloc[0], group.iloc[-1]
        parts.append(
            f"{model} ({decoder}; {n_relevant}+{n_distractor}, {placement}): one-step accuracy "
            f"{ci(low, 'one_step_accuracy', 'one_step_low', 'one_step_high')} at {masks_text(low['masks'])}, "
            f"{ci(high, 'one_step_accuracy', 'one_step_low', 'one_step_high')} at {masks_text(high['masks'])} against "
            f"{ci(high, 'iterative_accuracy', 'iterative_low', 'iterative_high')} decoded in {high['steps']} steps "
            f"(gain {ci(high, 'gain')}); there the answer settles at step {ci(high, 'settle_step')} and its slot is "
            f"unmasked last in {high['answer_last']:.0%} of the prompts")
    return "; ".join(parts) + "." if parts else "No condition without filler was decoded; see the table."


def shown(tables: dict) -> dict:
    """Accuracies, gain and settle step per condition (per-step details: tables/decode_trajectory.csv)."""
    frame = tables["iterative_accuracy"]
    view = frame[KEYS + ["n"]].copy()
    view["one step"] = [ci(r, "one_step_accuracy", "one_step_low", "one_step_high") for _, r in frame.iterrows()]
    view["iterative"] = [ci(r, "iterative_accuracy", "iterative_low", "iterative_high") for _, r in frame.iterrows()]
    view["gain"] = [ci(r, "gain") for _, r in frame.iterrows()]
    view["answer settles at step"] = [ci(r, "settle_step") for _, r in frame.iterrows()]
    view["slot unmasked last"] = [f"{share:.0%}" for share in frame["answer_last"]]
    return {"One-step against iterative accuracy (tasks pooled)": view}


ANALYSIS = Analysis(
    name="iterative",
    title="Iterative against one-step decoding",
    needs=("decode",),
    tables=tables,
    figures=figures,
    paragraph=paragraph,
    shown=shown,
)
