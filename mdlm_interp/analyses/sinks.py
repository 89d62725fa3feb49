"""Attention sinks per denoising step: steps stores -> the sink table per step and a figure of how sinks move.

Reads steps stores (``mdlm-interp steps record``; ``attention/received``: the attention weight each key
position receives from every query, averaged over the queries). A sink of a head at a step is a key
position receiving more than ``SINK_THRESHOLD`` (0.05, about 30 times the uniform share in a task
prompt of ~600 tokens) of that head's attention. Each sink is classed by what it holds at that step,
first match wins: "answer slot" (the answer slot), "mask" (a mask token),
"first token" (position 0), "punctuation" (a token that is punctuation or whitespace only), "other".
"""

import numpy as np

from mdlm_interp.analyses.plotting import figure_title, new_figure
from mdlm_interp.analyses.registry import Analysis, FigureOut
from mdlm_interp.analyses.stats import bootstrap_mean
from mdlm_interp.store.identity import read_identity
from mdlm_interp.store.results import open_results

SINK_THRESHOLD = 0.05  # about 30 times the uniform share over the ~600 positions of a task prompt
KINDS = ("answer slot", "mask", "first token", "punctuation", "other")
COLOURS = {"answer slot": "tab:red", "mask": "tab:blue", "first token": "black", "punctuation": "tab:green",
           "other": "tab:grey"}


def classify(position: int, answer_position: int, masked: bool, punctuation: bool) -> str:
    """Return the kind of a key position (one of ``KINDS``), first match wins."""
    if position == answer_position:
        return "answer slot"
    if masked:
        return "mask"
    if position == 0:
        return "first token"
    return "punctuation" if punctuation else "other"


def sinks_of(received: np.ndarray, masked: np.ndarray, punctuation: np.ndarray, answer_position: int,
             threshold: float = SINK_THRESHOLD) -> list[dict]:
    """Return one dict per sink of one step: layer, head, position, relative (position - answer slot), kind,
    mass; ``received`` [layers, heads, width] (NaN pads), ``masked`` and ``punctuation`` bool [width]."""
    found = []
    for layer, head, position in zip(*np.nonzero(np.nan_to_num(received, nan=0.0) > threshold)):
        found.append({"layer": int(layer), "head": int(head), "position": int(position),
                      "relative": int(position) - int(answer_position),
                      "kind": classify(int(position), answer_position, bool(masked[position]),
                                       bool(punctuation[position])),
                      "mass": float(received[layer, head, position])})
    return found


def sink_table(paths, threshold: float = SINK_THRESHOLD) -> dict:
    """Return {"sinks": one row per (store, prompt, step, sink) with model, example, task, masks, step,
    masks_left (masks in the step's input), layer, head, position, relative, kind, mass; "sink_kinds": per
    model, step and kind the mean number of sinks per prompt (bootstrap over prompts) and their mean mass}."""
    import pandas as pd

    rows = []
    for path in paths:
        with open_results(path, "steps") as store:
            done = int(store.attrs["n_rows_done"])
            if not store.attrs["settings"].get("attention", True):
                continue
            frame = store.frame("rows").iloc[:done]
            model = read_identity(store.attrs).label
            for row, meta in frame.iterrows():
                received = store.file["attention/received"][row]
                masked = store.file["canvas/masked"][row]
                for sink in sinks_of(received, masked, store.file["canvas/punctuation"][row],
                                     int(meta["answer_position"]), threshold):
                    rows.append({"model": model, "example": int(meta["example"]), "task": meta["task"],
                                 "masks": int(meta["masks"]), "step": int(meta["step"]),
                                 "masks_left": int(masked.sum()), **sink})
    columns = ["model", "example", "task", "masks", "step", "masks_left", "layer", "head", "position", "relative",
               "kind", "mass"]
    sinks = pd.DataFrame(rows, columns=columns)
    kinds = []
    for (model, step), group in sinks.groupby(["model", "step"]):
        prompts = sorted(set(zip(group["task"], group["example"])))
        for kind in KINDS:
            per_prompt = [int(((group["task"] == t) & (group["example"] == e) & (group["kind"] == kind)).sum())
                          for t, e in prompts]
            mean, low, high = bootstrap_mean(per_prompt)
            chosen = group[group["kind"] == kind]
            kinds.append({"model": model, "step": int(step), "kind": kind, "prompts": len(prompts),
                          "sinks_per_prompt": float(mean), "low": float(low), "high": float(high),
                          "mean_mass": float(chosen["mass"].mean()) if len(chosen) else np.nan,
                          "masks_left": float(group["masks_left"].mean())})
    return {"sinks": sinks, "sink_kinds": pd.DataFrame(kinds)}


def figures(tables: dict) -> list:
    """Return one figure per model: sinks per prompt of each kind against the step, masks left on a second axis."""
    kinds = tables["sink_kinds"]
    out = []
    for model, group in kinds.groupby("model"):
        figure, axes = new_figure(1, 1, width=6.5)
        ax = axes[0, 0]
        for kind in KINDS:
            part = group[group["kind"] == kind].sort_values("step")
            if part["sinks_per_prompt"].sum() == 0:
                continue
            ax.errorbar(part["step"], part["sinks_per_prompt"],
                        yerr=[part["sinks_per_prompt"] - part["low"], part["high"] - part["sinks_per_prompt"]],
                        marker="o", color=COLOURS[kind], label=kind, capsize=2)
        ax.set_xlabel("denoising step")
        ax.set_ylabel(f"sinks per prompt (heads x positions > {SINK_THRESHOLD:g} of attention)")
        ax.legend(fontsize="small")
        masks = group.drop_duplicates("step").sort_values("step")
        twin = ax.twinx()
        twin.plot(masks["step"], masks["masks_left"], color="tab:purple", linestyle=":", label="masks left")
        twin.set_ylabel("masks left in the canvas", color="tab:purple")
        ax.set_title(figure_title([model], "attention sinks per step by what they hold",
                                  n=int(group["prompts"].max()), per="step"), fontsize="small")
        out.append(FigureOut(f"sinks_{model.replace('/', '_')}", figure,
                             f"Attention sinks of {model} per denoising step, by what the sink position holds, "
                             "with 95% bootstrap intervals over prompts; dotted: masks left."))
    return out


def paragraph(tables: dict) -> str:
    """Return the findings in words: per model, the share of sinks of each kind at the first and last step."""
    sinks = tables["sinks"]
    if sinks.empty:
        return f"No head gives more than {SINK_THRESHOLD:g} of its attention to one position at any step."
    parts = []
    for model, group in sinks.groupby("model"):
        first, last = group["step"].min(), group["step"].max()
        shares = []
        for step in (first, last):
            at = group[group["step"] == step]["kind"].value_counts(normalize=True)
            shares.append(", ".join(f"{kind} {share:.0%}" for kind, share in at.items()))
        parts.append(f"{model}: at step {first} the sinks are {shares[0]}; at step {last} {shares[1]}.")
    return " ".join(parts)


ANALYSIS = Analysis(
    name="sinks",
    title="Attention sinks per denoising step",
    needs=(),
    tables=sink_table,
    figures=figures,
    paragraph=paragraph,
    shown=lambda tables: {"sinks per prompt by kind and step": tables["sink_kinds"]},
    store_kind="steps",
)
