"""compare's report.md: stores, findings, then a section per analysis."""

from mdlm_interp.analyses.report import markdown_table
from mdlm_interp.compare.pairing import CONDITION


def render(provenance: dict, tables: dict, lines: dict, figures: dict) -> str:
    """Return report.md's text: stores, findings, then a section per analysis (record stores: accuracy, change,
    attribution, attention; result stores: patching maps and their change, ablation)."""
    def weights(s):
        return s["weights"][:19] + ("+adapter" if s["adapter"] else "")

    def image(name: str) -> list[str]:
        drawn = {f.name for f in figures.get("record", [])}
        return [f"![{name.replace('_', ' ')}](figures/{name}.png)", ""] if name in drawn else []

    stores = [{"model": s["model"], "store": s["path"], "seed": s["seed"], "rows": s["rows"], "weights": weights(s)}
              for s in provenance["stores"]]
    results = [{"model": s["model"], "kind": s["kind"], "store": s["path"], "seed": s["seed"], "rows": s["rows"],
                "weights": weights(s)} for s in provenance["result_stores"]]
    text = [
        "# mdlm-interp comparison", "",
        f"Made by `{provenance['command_line']}` with mdlm-interp {provenance['toolkit_version']} on "
        f"{provenance['created']}. Intervals: {provenance['intervals']}. The reference is {provenance['reference']}; "
        + (f"held-in categories: {', '.join(provenance['held_in'])} (the others are held out)." if provenance["held_in"]
           is not None else "categories are not split (no adapter's training config names held-out categories)."),
        "",
        "## Stores", "", markdown_table(stores) if stores else "(no record store)", "",
    ]
    if results:
        text += ["Result stores:", "", markdown_table(results), ""]
    text += [f"- {note}" for note in provenance["notes"]] + ([""] if provenance["notes"] else [])
    text += ["## Findings", "", *lines["record"], *lines.get("patching", []), *lines.get("ablation", []), ""]
    if "accuracy" in tables:
        accuracy = tables["accuracy"][["model", "group", *CONDITION, "n", "accuracy", "ci_low", "ci_high"]]
        text += ["## Accuracy against masks", "", *image("accuracy"),
                 markdown_table(accuracy.to_dict("records")), "",
                 "## Change against the reference on the same prompts", "",
                 markdown_table(tables["accuracy_change"].to_dict("records")), "",
                 "## Attribution (normalised gradient)", "",
                 markdown_table(tables["attribution"].to_dict("records")) if "attribution" in tables
                 else "(no store recorded /gradients)", "",
                 "## Attention to the masks per layer x head", ""]
        if "attention_heads" in tables:
            heads = tables["attention_heads"]
            heads = heads[~heads["filler"] & (heads["masks"] == heads["masks"].max())]
            columns = ["model", "placement", "masks", "layer", "head", "n", "from_answer", "from_answer_low",
                       "from_answer_high", "from_context"]
            text += [*image("attention_heads"), *image("attention_change"),
                     markdown_table(heads[columns].to_dict("records")), "",
                     markdown_table(tables["attention_change"].to_dict("records")), ""]
        else:
            text += ["(no store recorded /attention)", ""]
    text += ["## Patching maps", ""]
    if "patching_cells" in tables:
        text += patching_section(tables, figures["patching"])
    else:
        text += ["(no patching store given: `mdlm-interp patch --adapter ...` writes one per model)", ""]
    text += ["## Ablation", ""]
    if "ablation" in tables:
        if figures.get("ablation"):
            text += [" ".join(f"![{f.name}](figures/{f.name}.png)" for f in figures["ablation"]), "",
                     figures["ablation"][0].caption, ""]
        text += ["Tables: [tables/ablation.csv](tables/ablation.csv), "
                 "[tables/ablation_change.csv](tables/ablation_change.csv).", "",
                 markdown_table(tables["ablation_change"].to_dict("records")), ""]
    else:
        text += ["(no ablation store given)", ""]
    return "\n".join(text)


def patching_section(tables: dict, rows: list) -> list[str]:
    """Return the report's patching section: the runs side by side, the maps (``patching_maps``: a line of
    images per row, then its caption), and the cells whose recovery changed most (every cell:
    tables/patching_change.csv)."""
    runs = tables["patching_runs"].assign(gap=lambda f: f["clean_logit_diff"] - f["corrupt_logit_diff"])
    columns = ["model", "comparison", "n", "clean_accuracy", "corrupt_accuracy", "clean_logit_diff",
               "corrupt_logit_diff", "gap", "wrong_token_share"]
    text = [markdown_table(runs[columns].to_dict("records")), ""]
    for row in rows:
        text += [" ".join(f"![{f.name}](figures/{f.name}.png)" for f in row), "", row[0].caption, ""]
    change = tables["patching_change"]
    if not change.empty:
        order = change.assign(size=change["change"].abs()).sort_values("size", ascending=False, kind="stable")
        top = order.groupby(["model", "comparison", "direction", "site"], sort=False).head(3).drop(columns="size")
        columns = ["model", "reference", "comparison", "direction", "site", "layer", "position", "head", "n_pairs",
                   "reference_recovery", "recovery", "change", "change_low", "change_high", "reference_effect",
                   "effect", "effect_change", "effect_change_low", "effect_change_high"]
        text += ["**The three cells per model, direction and site whose recovery changed most** (all cells, with "
                 "each model's interval: [tables/patching_change.csv](tables/patching_change.csv))", "",
                 markdown_table(top[columns].to_dict("records")), ""]
    return text
