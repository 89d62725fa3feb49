"""Before/after comparison: the analyses of several models (a base model and its fine-tuned adapters)
side by side, with each model's change against the first.

Stores are read with ``analyses.load``: a model is the store's model identity
(``store.identity.read_identity``: weights and adapter fingerprints), labelled with its model id plus
its adapter's folder name (``record --adapter``, ``patch --adapter``, ``ablate --adapter``; two models
whose labels collide get a fingerprint suffix), several record stores of one model pool their rows,
and rows pair across models by prompt ("seed:task:prompt"), so every change is paired. The first model
is the reference ("before"): the first of the record stores, else of the result stores, in the order
given. Categories are split into held-in and held-out only when ``--held-in`` names them or an
adapter's training config names the held-out categories (``pairing.split_categories``); otherwise
every table has the group "all" alone. Record stores, patching stores (``patch``) and ablation stores
(``ablate``) may come in any mix; a store of another kind is skipped with a note. The driver walks the
analyses registry; ``SECTIONS`` says how each analysis's results of two models are compared.

Tables (``tables/NAME.csv``):

- ``accuracy``: per model, category group ("all", and "held-in", "held-out" when split), placement, filler and masks:
  n, accuracy with Wilson 95% bounds, p(answer) and entropy with bootstrap bounds (``analyses.grouped``);
- ``accuracy_change``: each model minus the reference on the same prompts, per group and condition
  (``analyses.stats.paired_difference``);
- ``attribution``: ``analyses.attribution`` (normalised gradient on masks, last 50, all non-mask tokens);
- ``attention_heads``: ``analyses.attention`` per layer x head and condition (mass from the answer
  position and from the context on the tokens after the answer slot), and ``attention_change``: each
  model minus the reference per layer x head at the most masks, paired by prompt;
- ``patching_runs``, ``patching_cells``, ``patching_attribution``: ``analyses.patching`` of every
  patching store (recovery per layer x position group and per layer x head, 95% bootstrap), and
  ``patching_change``: per comparison (e.g. "1 vs 50 masks"), model but the reference and cell, the
  recovery of both models on the prompts they share, its change with a paired 95% bootstrap interval,
  and the effect of the patch in logits (patched minus the receiving run's own logit(answer) -
  logit(wrong), which stays readable when a repaired model's clean - corrupt gap is small), with its
  paired change;
- ``ablation``: ``analyses.ablation`` of every ablation store, and ``ablation_change``: per head set,
  mask count, setting and mode, each model's accuracy minus the reference's on the same prompts, and
  the change of the ablation's effect (ablated minus unablated accuracy), paired bootstrap intervals.

What the shipped adapters changed in organism-llada is in the README ("MA-loss fine-tuning and
before/after comparison", "On organism-llada"): the collapse route (head L0.H1 at the answer slot) is
still the only route of the remaining 1 vs 50 mask gap, but worth about a fifth of the logits, and the
layer-2/3 MLPs that amplified it hardly respond any more.
"""


import json
from pathlib import Path

from mdlm_interp.analyses import attention, attribution
from mdlm_interp.analyses import ablation as ablation_tables
from mdlm_interp.analyses import patching as patching_tables
from mdlm_interp.analyses.ablation import figures as ablation_figures
from mdlm_interp.analyses.attention import figure_heads, main_condition
from mdlm_interp.analyses.registry import FigureOut, analyses
from mdlm_interp.analyses.plotting import stamp
from mdlm_interp.analyses.report import drawn, output_folder, per_store, save_figures
from mdlm_interp.analyses.stats import INTERVALS
from mdlm_interp.compare.ablation import ablation_change, ablation_findings
from mdlm_interp.compare.pairing import load_models, model_order
from mdlm_interp.compare.patching import paired_cells, patching_change, patching_findings, patching_maps
from mdlm_interp.compare.record import (accuracy_figure, accuracy_table, analysis_tables, attention_change,
                                        change_figure, change_table, findings)
from mdlm_interp.compare.report import render
from mdlm_interp.store.identity import read_identity
from mdlm_interp.store.layout import first_line
from mdlm_interp.store.results import open_results
from mdlm_interp.version import __version__

__all__ = ["load_models", "paired_cells", "write_comparison"]


def record_section(recordings, models: list, notes: list) -> tuple[dict, list, list]:
    """Return (tables, figures, findings) of the record stores: accuracy and its change per category group,
    attribution, attention per head and its change (``compare.record``)."""
    import pandas as pd

    accuracy, change = accuracy_table(recordings), change_table(recordings)
    tables = dict(accuracy=accuracy, accuracy_change=change, **analysis_tables(recordings, "gradients", attribution))
    attention_tables = analysis_tables(recordings, "attention", attention)
    heads = attention_tables.get("attention_heads")
    heads_change = attention_change(recordings)
    if heads is not None:
        tables.update(attention_heads=heads, attention_change=heads_change)
    reference = recordings.models()[0]
    figures = drawn(lambda: [FigureOut("accuracy", accuracy_figure(accuracy, reference), "")], notes=notes,
                    what="accuracy figure")
    if heads is not None and not heads_change.empty:
        figures += drawn(lambda: [FigureOut("attention_change", change_figure(heads_change, reference), "")],
                         notes=notes, what="attention change figure")
    condition = main_condition(attention_tables["attention_summary"]) if heads is not None else None
    if condition is not None:
        figures += drawn(lambda: [FigureOut("attention_heads", figure_heads(heads, condition).figure, "")],
                         notes=notes, what="attention heads figure")
    lines = findings(recordings.models(), accuracy, change, pd.DataFrame() if heads is None else heads,
                     heads_change, tables.get("attribution", pd.DataFrame()))
    return tables, figures, lines


def patching_section(recordings, models: list, notes: list) -> tuple[dict, list, list]:
    """Return (tables, figure rows, findings) of the patching stores: every model's maps side by side and
    their paired change against the reference (``compare.patching``)."""
    paths, labels = recordings.results["patching"], recordings.result_models
    found = per_store(patching_tables, paths, labels)
    change = patching_change(paths, labels, models, notes)
    rows = drawn(patching_maps, found, change, models, notes=notes, what="patching maps")
    return {**found, "patching_change": change}, rows, patching_findings(found, change)


def ablation_section(recordings, models: list, notes: list) -> tuple[dict, list, list]:
    """Return (tables, figures, findings) of the ablation stores and their change against the reference."""
    paths, labels = recordings.results["ablation"], recordings.result_models
    found = per_store(ablation_tables, paths, labels)
    change = ablation_change(paths, labels, models, notes)
    figures = drawn(ablation_figures, found, notes=notes, what="ablation figures")
    return {**found, "ablation_change": change}, figures, ablation_findings(found, change)


# analysis name (``analyses.registry``) -> how compare puts two models' results side by side
SECTIONS = {"inverse_scaling": record_section, "patching": patching_section, "ablation": ablation_section}


def write_comparison(paths, out, *, held_in=None, command_line: str = "") -> Path:
    """Compare the stores ``paths`` (record, patching and ablation stores, or folders searched for them) into
    folder ``out``; return the path of report.md.

    ``held_in``: the categories the fine-tuning covered (None: those the adapters' training configs
    imply, ``pairing.split_categories``; no split when none names held-out categories). Walks the
    analyses registry and runs the comparison (``SECTIONS``) of every analysis that has one and data.
    Writes tables/*.csv (module docstring); figures/accuracy.png, and figures/attention_heads.png (the
    analyses' heatmaps, a row per model) and figures/attention_change.png when attention was recorded;
    for patching stores each model's heatmaps (``analyses.patching``) and figures/patching_change_*.png;
    for ablation stores each model's ablation figure; provenance.json and report.md. A figure that fails
    is a note in the report. Raises ``UsageError`` before writing anything for a path that is not a store
    or fewer than two models.
    """
    from datetime import datetime, timezone

    recordings = load_models(paths, held_in)
    models = model_order(recordings)
    notes = list(recordings.notes)
    tables, lines, figures = {}, {"record": []}, {}
    for analysis in analyses():
        section = SECTIONS.get(analysis.name)
        has_data = recordings.stores if analysis.store_kind == "record" else recordings.results.get(analysis.store_kind)
        if section is None or not has_data:
            continue
        try:
            found, drawn_figures, found_lines = section(recordings, models, notes)
        except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError) as error:  # e.g. NaN everywhere
            notes.append(f"The {analysis.title.lower()} comparison failed on these data ({type(error).__name__}: "
                         f"{first_line(error)}); it is left out.")
            continue
        key = "record" if analysis.store_kind == "record" else analysis.store_kind
        tables.update(found)
        figures[key], lines[key] = drawn_figures, found_lines
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    provenance = {
        "command_line": command_line, "toolkit_version": __version__, "created": created, "intervals": INTERVALS,
        "held_in": list(recordings.held_in) if recordings.held_in is not None else None, "reference": models[0],
        "models": models,
        "stores": [{"path": str(s.path), "model": s.model, "model_id": s.model_id, "weights": s.fingerprint,
                    "adapter": s.identity.adapter, "adapter_fingerprint": s.identity.adapter_fingerprint,
                    "seed": s.seed, "rows": s.n_rows, "command_line": s.command_line} for s in recordings.stores],
        "result_stores": [result_provenance(path, recordings.result_models[path])
                          for paths in recordings.results.values() for path in paths],
        "notes": notes,
    }
    with output_folder(out) as out:
        for name, frame in tables.items():
            frame.to_csv(out / "tables" / f"{name}.csv", index=False, float_format="%.6g")
        provenance_stamp = stamp(command_line, created)
        figures = {key: save_figures(value, out / "figures", provenance_stamp, notes) if key != "patching"
                   else [kept for row in value if (kept := save_figures(row, out / "figures", provenance_stamp, notes))]
                   for key, value in figures.items()}
        (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        report = out / "report.md"
        report.write_text(render(provenance, tables, lines, figures)
                          + "".join(f"\n- {note}" for note in comparison_page(out, provenance, tables, notes, recordings)))
    return report


def comparison_page(out, provenance: dict, tables: dict, notes: list, recordings) -> list[str]:
    """Write OUT/report.html (``analyses.html_report``): the comparison's tables as tables and interactive
    plots, the patching heatmaps and the attention viewer; return notes for report.md on what it leaves out
    or why it could not be written."""
    from mdlm_interp.analyses.html_report import Section, write_html

    try:
        found = write_html(out / "report.html", title="mdlm-interp comparison", provenance=provenance,
                           sections=[Section("Comparison", notes=list(notes), tables=tables, shown=tables)],
                           recordings=recordings)
    except Exception as error:  # the Markdown report stands without the page
        (out / "report.html").unlink(missing_ok=True)
        return [f"report.html could not be written ({type(error).__name__}: {first_line(error)})."]
    return [f"report.html: {note}" for note in found]


def result_provenance(path, model: str) -> dict:
    """Return what the report and provenance.json say about one result store."""
    with open_results(path) as store:
        identity = read_identity(store.attrs)
        return {"path": str(path), "kind": store.kind.name, "model": model, "model_id": identity.model_id,
                "weights": identity.weights_fingerprint, "adapter": identity.adapter,
                "adapter_fingerprint": identity.adapter_fingerprint, "seed": store.attrs["seed"],
                "rows": store.n_rows, "command_line": store.attrs["command_line"]}
