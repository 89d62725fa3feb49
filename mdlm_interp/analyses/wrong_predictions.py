"""What the model says instead: the most frequent wrong predictions per condition, decoded to text,
with their share, and what kind of token they are (a query word, another word of the prompt, the
mask or filler token, or a token not in the input, such as an end-of-text token)."""

import numpy as np

from mdlm_interp.analyses.data import SETTING, Skip
from mdlm_interp.analyses.decode import token_text, tokenizer_for
from mdlm_interp.analyses.grouped import clean_types, masks_text, slug
from mdlm_interp.analyses.plotting import error_bars, figure_title, new_figure
from mdlm_interp.analyses.registry import Analysis, FigureOut
from mdlm_interp.analyses.stats import wilson_interval

KEYS = SETTING + ["placement", "filler", "masks"]
TOP = 5
KINDS = {
    "query_word": "a token of the query (another of its words)",
    "prompt_token": "a token elsewhere in the prompt",
    "appended_token": "the mask or filler token after the answer slot",
    "not_in_input": "a token not in the input (e.g. end of text)",
}


def kind_of(predicted: int, tokens: np.ndarray, row) -> str:
    """Classify one wrong prediction against the row's input ids (see ``KINDS``)."""
    if predicted in tokens[row["query_start"]:row["query_end"]]:
        return "query_word"
    if row["masks_end"] > row["masks_start"] and predicted in tokens[row["masks_start"]:row["masks_end"]]:
        return "appended_token"
    if predicted in tokens[:row["answer_position"]] or predicted in tokens[row["masks_end"]:]:
        return "prompt_token"
    return "not_in_input"


def wrong_predictions(recordings) -> dict:
    """Return {"wrong_predictions", "wrong_prediction_kinds"}.

    wrong_predictions: per condition (KEYS) the TOP most frequent wrong predicted ids: rank, token_id,
    token (decoded), count, n (rows), n_wrong, share_of_wrong, share_of_rows with Wilson bounds
    share_low / share_high. wrong_prediction_kinds: per condition n, n_wrong and the share of the wrong
    predictions of each kind in ``KINDS``."""
    import pandas as pd

    rows = recordings.rows
    if rows.empty:
        raise Skip("no store recorded input tokens")
    model_ids = {s.model: s.model_id for s in recordings.stores}
    top_rows, kind_rows = [], []
    for keys, group in rows.groupby(KEYS):
        key = dict(zip(KEYS, keys))
        wrong = group[~group["correct"]]
        counts = wrong["predicted_id"].value_counts()
        for rank, (token_id, count) in enumerate(counts.head(TOP).items(), start=1):
            low, high = wilson_interval(count, len(group))
            top_rows.append({**key, "rank": rank, "token_id": int(token_id),
                             "token": token_text(model_ids[key["model"]], int(token_id)), "count": int(count),
                             "n": len(group), "n_wrong": len(wrong), "share_of_wrong": count / len(wrong),
                             "share_of_rows": count / len(group), "share_low": float(low), "share_high": float(high)})
        kinds = dict.fromkeys(KINDS, 0)
        if len(wrong):
            tokens = recordings.gather(wrong, "tokens/input_ids")
            for (_, row), ids in zip(wrong.iterrows(), tokens):
                kinds[kind_of(int(row["predicted_id"]), ids, row)] += 1
        kind_rows.append({**key, "n": len(group), "n_wrong": len(wrong),
                          **{name: (count / len(wrong) if len(wrong) else np.nan) for name, count in kinds.items()}})
    columns = KEYS + ["rank", "token_id", "token", "count", "n", "n_wrong", "share_of_wrong", "share_of_rows",
                      "share_low", "share_high"]
    return {"wrong_predictions": clean_types(pd.DataFrame(top_rows, columns=columns)),
            "wrong_prediction_kinds": clean_types(pd.DataFrame(kind_rows, columns=KEYS + ["n", "n_wrong", *KINDS]))}


def tables(recordings) -> dict:
    """The two frames of ``wrong_predictions``; a tokenizer that could not be loaded adds a note to
    ``recordings.notes``."""
    out = wrong_predictions(recordings)
    for store in recordings.stores:
        note = tokenizer_for(store.model_id)[1]
        if note and note not in recordings.notes:
            recordings.notes.append(note)
    return out


def figures(tables: dict) -> list:
    """Stacked shares per mask count for the setting with the most mask counts: correct, the most frequent
    wrong tokens, other wrong predictions; one panel per diffusion model."""
    top, kinds = tables["wrong_predictions"], tables["wrong_prediction_kinds"]
    ladders = kinds[kinds["masks"] >= 1].groupby(["n_relevant", "n_distractor", "placement"])["masks"].nunique()
    if ladders.empty or ladders.max() < 2:
        return []
    n_relevant, n_distractor, placement = sorted(ladders.index, key=lambda k: (k[2] != "random", -ladders[k], -k[0]))[0]
    pick = lambda f: f[(f["n_relevant"] == n_relevant) & (f["n_distractor"] == n_distractor)  # noqa: E731
                       & (f["placement"] == placement) & ~f["filler"] & (f["masks"] >= 1)]
    top, kinds = pick(top), pick(kinds)
    models = list(kinds["model"].unique())
    figure, axes = new_figure(1, len(models), width=4.2, height=3.4, sharey=True)
    import matplotlib

    palette = matplotlib.colormaps["tab10"]
    for ax, model in zip(axes[0], models):
        model_kinds = kinds[kinds["model"] == model].sort_values("masks")
        model_top = top[top["model"] == model]
        leaders = model_top.groupby("token")["count"].sum().sort_values(ascending=False).head(3).index.tolist()
        x = np.arange(len(model_kinds))
        bottom = np.zeros(len(x))
        correct = 1 - model_kinds["n_wrong"] / model_kinds["n"]
        ax.bar(x, correct, color="#2ca02c", label="correct")
        low, high = wilson_interval((model_kinds["n"] - model_kinds["n_wrong"]).to_numpy(int),
                                    model_kinds["n"].to_numpy(int))
        ax.errorbar(x, correct, yerr=error_bars(correct, low, high), fmt="none", ecolor="black", capsize=2,
                    elinewidth=0.8)
        bottom += correct.to_numpy()
        for i, token in enumerate(leaders):
            share = [model_top[(model_top["masks"] == m) & (model_top["token"] == token)]["share_of_rows"].sum()
                     for m in model_kinds["masks"]]
            ax.bar(x, share, bottom=bottom, color=palette(i + 3), label=f"wrong: {token}")
            bottom += np.asarray(share)
        ax.bar(x, 1 - bottom, bottom=bottom, color="#bbbbbb", label="wrong: other tokens")
        ax.set_xticks(x, [str(m) for m in model_kinds["masks"]])
        ax.set_xlabel("masks (answer slot + masks after it)")
        ax.set_title(model, fontsize=10)
        ax.legend(fontsize=6.5, loc="lower left")
    axes[0, 0].set_ylabel("share of prompts")
    figure.suptitle(figure_title(models, "what the model predicts", n_relevant, n_distractor, placement, kinds["n"]))
    return [FigureOut(
        f"wrong_predictions_r{n_relevant}_d{n_distractor}_{slug(placement)}", figure,
        f"Share of prompts answered correctly and of the most frequent wrong predictions (decoded) at each number "
        f"of masks ({n_relevant} relevant + {n_distractor} distractor, {placement}), one panel per model; black bars: "
        f"Wilson 95% interval of the share answered correctly.")]


def paragraph(tables: dict) -> str:
    """The leading wrong prediction at the most masks per model and setting."""
    top, kinds = tables["wrong_predictions"], tables["wrong_prediction_kinds"]
    parts = []
    for (model, n_relevant, n_distractor, placement, filler), group in kinds.groupby(
            ["model", "n_relevant", "n_distractor", "placement", "filler"], sort=False):
        if filler or placement != "random":
            continue
        row = group.loc[group["masks"].idxmax()]
        if row["n_wrong"] == 0:
            parts.append(f"{model} ({n_relevant}+{n_distractor}, {masks_text(row['masks'])}) makes no mistakes")
            continue
        first = top[(top["model"] == model) & (top["n_relevant"] == n_relevant) & (top["n_distractor"] == n_distractor)
                    & (top["placement"] == placement) & ~top["filler"] & (top["masks"] == row["masks"])
                    & (top["rank"] == 1)].iloc[0]
        kind = max(KINDS, key=lambda k: row[k])
        parts.append(f"{model} ({n_relevant}+{n_distractor}, {masks_text(row['masks'])}): wrong on {row['n_wrong']} of "
                     f"{row['n']} prompts, most often {first['token']} ({first['share_of_rows']:.3f} of all prompts "
                     f"[{first['share_low']:.3f}, {first['share_high']:.3f}]); {row[kind]:.0%} of the wrong "
                     f"predictions are {KINDS[kind]}")
    return ("With the random placement, at the most masks recorded: " + "; ".join(parts) + ".") if parts else (
        "No random-placement condition was recorded; see the tables.")


def shown(tables: dict) -> dict:
    """The top wrong predictions and the kinds, as report tables."""
    top = tables["wrong_predictions"]
    top = top[top["rank"] <= 3].copy()
    top["share_of_rows"] = [f"{r['share_of_rows']:.3f} [{r['share_low']:.3f}, {r['share_high']:.3f}]"
                            for _, r in top.iterrows()]
    top = top.drop(columns=["share_low", "share_high"])
    return {f"The 3 most frequent wrong predictions per condition ({TOP}: tables/wrong_predictions.csv)": top,
            "Kinds of wrong predictions (shares of the wrong ones)": tables["wrong_prediction_kinds"]}


ANALYSIS = Analysis(
    name="wrong_predictions",
    title="What the model says instead",
    needs=("tokens",),
    tables=tables,
    figures=figures,
    paragraph=paragraph,
    shown=shown,
)
