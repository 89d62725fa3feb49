"""When the answer settles, with and without a patched site: step patching stores -> table and figure.

Reads step patching stores (``mdlm-interp steps patch``). Per model, site and patched step (the
unpatched receiver as site "none"): the share of runs whose final answer is correct and the share it
changed (Wilson 95%), the mean step at which the prediction for the answer slot settles, the mean
logit difference at the patched step and at the step the slot is unmasked, and attribution patching's
mean estimate (95% bootstrap over prompts).
"""


from mdlm_interp.analyses.plotting import figure_title, new_figure
from mdlm_interp.analyses.registry import Analysis, FigureOut
from mdlm_interp.analyses.stats import bootstrap_mean, wilson_interval
from mdlm_interp.store.identity import read_identity
from mdlm_interp.store.results import open_results


def settle_steps(paths) -> dict:
    """Return {"settle_steps": one row per (model, site, patched_step): n, accuracy with ci_low / ci_high,
    changed with changed_low / changed_high, settle_step with settle_low / settle_high, logit_diff,
    attribution_logit_diff and final_logit_diff with _low / _high; patched_step -1 is every step (or none)}."""
    import pandas as pd

    rows = []
    for path in paths:
        with open_results(path, "step_patching") as store:
            runs = store.examples
            model = read_identity(store.attrs).label
            receiver, donor = store.attrs["receiver"], store.attrs["donor"]
        for (site, step), group in runs.groupby(["site", "patched_step"], sort=False):
            n = len(group)
            row = {"model": model, "site": site, "patched_step": int(step), "n": n,
                   "receiver_masks": receiver["masks"], "donor_masks": donor["masks"], "donor_shift": donor["shift"]}
            for name, column in (("accuracy", "correct"), ("changed", "changed")):
                hits = int(group[column].sum())
                low, high = (float(v) for v in wilson_interval(hits, n))
                prefix = "ci" if name == "accuracy" else name
                row.update({name: hits / n, f"{prefix}_low": low, f"{prefix}_high": high})
            for name, column in (("settle", "settle_step"), ("logit_diff", "logit_diff"),
                                 ("attribution", "attribution_logit_diff"), ("final_logit_diff", "final_logit_diff")):
                mean, low, high = bootstrap_mean(group[column].to_numpy(dtype=float))
                key = "settle_step" if name == "settle" else ("attribution_logit_diff" if name == "attribution"
                                                              else name)
                row.update({key: float(mean), f"{name}_low": float(low), f"{name}_high": float(high)})
            rows.append(row)
    return {"settle_steps": pd.DataFrame(rows)}


def figures(tables: dict) -> list:
    """Return one figure per (model, site): settle step and final logit difference against the patched step,
    the unpatched receiver and the run patched at every step as horizontal lines."""
    table = tables["settle_steps"]
    out = []
    for model, group in table.groupby("model"):
        base = group[group["site"] == "none"].iloc[0]
        for site, part in group[group["site"] != "none"].groupby("site"):
            single = part[part["patched_step"] >= 0].sort_values("patched_step")
            every = part[part["patched_step"] < 0]
            if len(single) < 2:
                out.append(FigureOut(f"settle_{model}_{site}", None, f"{site} of {model} is patched at one step only"))
                continue
            figure, axes = new_figure(1, 2, width=4.0)
            for ax, (key, name, label) in zip(axes[0], (("settle_step", "settle", "step the answer settles"),
                                                        ("final_logit_diff", "final_logit_diff",
                                                         "logit diff when the slot is unmasked"))):
                ax.errorbar(single["patched_step"], single[key],
                            yerr=[single[key] - single[f"{name}_low"], single[f"{name}_high"] - single[key]],
                            marker="o", color="tab:red", capsize=2, label=f"{site} patched at step t")
                ax.axhline(base[key], color="black", linestyle="--", label="unpatched")
                if len(every):
                    ax.axhline(every.iloc[0][key], color="tab:red", linestyle=":", label=f"{site} at every step")
                ax.set_xlabel("patched step t")
                ax.set_ylabel(label)
                ax.set_xticks(single["patched_step"].tolist())
            axes[0, 0].legend(fontsize="x-small")
            figure.suptitle(figure_title([model], f"{site} from {base['donor_masks']} into {base['receiver_masks']} "
                                         "masks, per patched step", n=int(base["n"]), per="run"), fontsize="small")
            out.append(FigureOut(f"settle_{model}_{site}".replace("/", "_").replace(":", "_"), figure,
                                 f"When the answer settles (left) and its logit difference when the answer slot is "
                                 f"unmasked (right) with {site} patched at one step, against the unpatched receiver; "
                                 "bars: 95% bootstrap over prompts."))
    return out


def paragraph(tables: dict) -> str:
    """Return the findings in words: per model and site, the patched step that moves the settle step most."""
    table = tables["settle_steps"]
    parts = []
    for model, group in table.groupby("model"):
        base = group[group["site"] == "none"].iloc[0]
        for site, part in group[group["site"] != "none"].groupby("site"):
            single = part[part["patched_step"] >= 0]
            worst = single.loc[(single["settle_step"] - base["settle_step"]).abs().idxmax()] if len(single) else None
            if worst is None:
                continue
            parts.append(f"{model}, {site}: unpatched the answer settles at step {base['settle_step']:.2f}; patched "
                         f"at step {int(worst['patched_step'])} it settles at {worst['settle_step']:.2f} "
                         f"[{worst['settle_low']:.2f}, {worst['settle_high']:.2f}] and changes in "
                         f"{worst['changed']:.0%} of runs.")
    return " ".join(parts) or ""


ANALYSIS = Analysis(
    name="settle_steps",
    title="When the answer settles, with and without a patched site",
    needs=(),
    tables=settle_steps,
    figures=figures,
    paragraph=paragraph,
    store_kind="step_patching",
)
