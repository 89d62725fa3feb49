"""Run every registered analysis on a set of stores and write DIR/report.md, DIR/tables/*.csv,
DIR/figures/*.png and DIR/provenance.json."""

import copy
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mdlm_interp.analyses.data import Skip, load
from mdlm_interp.analyses.plotting import save, stamp
from mdlm_interp.analyses.registry import analyses as registered
from mdlm_interp.analyses.stats import INTERVALS
from mdlm_interp.errors import UsageError
from mdlm_interp.store.layout import first_line
from mdlm_interp.version import __version__

MAX_REPORT_ROWS = 400  # longer tables are cut in report.md (the CSV keeps every row)


@dataclass
class Outcome:
    """What one analysis produced: tables, figures (name, caption), its paragraph, or the reason it was skipped."""

    title: str
    tables: dict
    figures: list
    paragraph: str
    shown: dict
    skipped: str | None
    notes: list


def check_out(out) -> Path:
    """Return ``out`` as a Path; UsageError if it exists and is not a folder (nothing is created)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    return out


@contextmanager
def output_folder(out):
    """Create ``out`` with its tables/ and figures/ folders and yield it as a Path; UsageError if that is
    impossible. If the body raises, the folders this call created are removed again with what was
    written into them, so a crash leaves no empty or half-filled folders of its own behind."""
    import shutil

    out = check_out(out)
    created = [p for p in (*reversed(out.parents), out, out / "tables", out / "figures") if not p.exists()]
    try:
        for folder in created:
            folder.mkdir()
        yield out
    except BaseException as error:
        for folder in created:
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(error, OSError) and not isinstance(error, UsageError):
            raise UsageError(f"cannot write into {out}: {error.strerror or error}") from None
        raise


def drawn(draw, *args, notes: list, what: str = "figures") -> list:
    """Return ``draw(*args)`` (a list of ``FigureOut``), or [] with a note in ``notes`` if drawing fails:
    one figure that fails never aborts a report."""
    try:
        return list(draw(*args))
    except Exception as error:  # a figure is never worth the tables and the report
        notes.append(f"The {what} could not be drawn ({type(error).__name__}: {first_line(error)}); "
                     "the tables hold the numbers.")
        return []


def save_figures(figures: list, folder: Path, provenance: str, notes: list) -> list:
    """Write every ``FigureOut`` in ``figures`` as folder/NAME.png; return those written. A figure that
    cannot be written is left out with a note in ``notes``."""
    saved = []
    for figure in figures:
        if figure.figure is None:
            notes.append(f"Figure {figure.name} is not drawn: {figure.caption}")
            continue
        try:
            save(figure.figure, folder / f"{figure.name}.png", provenance)
            saved.append(figure)
        except Exception as error:  # e.g. matplotlib refusing a value; the report says so
            (folder / f"{figure.name}.png").unlink(missing_ok=True)
            notes.append(f"Figure {figure.name} could not be drawn ({type(error).__name__}: "
                         f"{first_line(error)}).")
    return saved


def run_analyses(recordings, only=None) -> list[Outcome]:
    """Run the registered analyses (or those named in ``only``) on ``recordings``; never raises ``Skip``."""
    outcomes = []
    for analysis in registered():
        if only and analysis.name not in only:
            continue
        if analysis.store_kind == "activations":
            own = copy.copy(recordings)
            own.notes = list(recordings.notes)  # what the analysis notes goes into its section only
            outcomes.append(tabulate(analysis, own, []))
            continue
        if analysis.store_kind != "record":
            outcomes.append(run_on_results(analysis, recordings))
            continue
        if not recordings.stores:
            outcomes.append(Outcome(analysis.title, {}, [], "", {}, "no record store was given", []))
            continue
        subset, left_out = recordings.with_groups(analysis.needs)
        notes = []
        if left_out and analysis.needs:
            notes.append(f"Stores without /{', /'.join(analysis.needs)} are left out here: {store_list(left_out)}.")
        if subset.rows.empty:
            outcomes.append(Outcome(analysis.title, {}, [], "", {}, "the stores hold no committed rows"
                                    if len(left_out) < len(recordings.stores)
                                    else f"no store recorded /{', /'.join(analysis.needs)}", notes))
            continue
        outcomes.append(tabulate(analysis, subset, notes))
    return outcomes


def tabulate(analysis, recordings, notes: list) -> Outcome:
    """Return the Outcome of ``analysis.tables(recordings)`` (``finish``), or the reason it was skipped: its
    ``Skip``, or the error it met on these data (e.g. NaN everywhere). ``notes``: the analysis's notes so
    far; what it notes on the way (``recordings.notes``, e.g. a tokenizer it could not load) is added."""
    known = len(recordings.notes)
    try:
        tables = analysis.tables(recordings)
    except Skip as reason:
        return Outcome(analysis.title, {}, [], "", {}, str(reason), notes)
    except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError) as error:
        return Outcome(analysis.title, {}, [], "", {}, f"it failed on these data ({type(error).__name__}: "
                       f"{first_line(error)})", notes)
    return finish(analysis, tables, notes + recordings.notes[known:])


def finish(analysis, tables: dict, notes: list) -> Outcome:
    """Return the Outcome of an analysis's tables: its figures, paragraph and shown tables; a figure or
    paragraph that fails on these data (e.g. NaN values) is a note, never an abort."""
    figures = drawn(analysis.figures, tables, notes=notes)
    try:
        paragraph = analysis.paragraph(tables)
    except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError) as error:
        paragraph = ""
        notes.append(f"The findings could not be put in words ({type(error).__name__}: {first_line(error)}); "
                     "the tables hold the numbers.")
    return Outcome(analysis.title, tables, figures, paragraph, (analysis.shown or (lambda t: t))(tables), None, notes)


def run_on_results(analysis, recordings) -> Outcome:
    """Run an analysis of result stores (``store_kind`` "patching" or "ablation") on those of ``recordings``,
    each store's rows labelled with its model's label in the report (``Recordings.result_models``)."""
    paths = recordings.results.get(analysis.store_kind, [])
    if not paths:
        return Outcome(analysis.title, {}, [], "", {}, f"no {analysis.store_kind} store was given", [])
    return finish(analysis, per_store(analysis.tables, paths, recordings.result_models), [])


def per_store(tables_of, paths: list, labels: dict) -> dict:
    """Return ``tables_of(paths)`` (an analysis of result stores) computed store by store with each store's
    model column set to its label in ``labels``, so that same-named models stay apart."""
    import pandas as pd

    parts = [{name: frame.assign(model=labels[path]) for name, frame in tables_of([path]).items()} for path in paths]
    return {name: pd.concat([p[name] for p in parts], ignore_index=True) for name in parts[0]}


def store_list(stores) -> str:
    """Return "a.h5 (model)" for a few stores, or a count per model with examples for many."""
    if len(stores) <= 4:
        return ", ".join(f"{s.path.name} ({s.model})" for s in stores)
    by_model = {}
    for s in stores:
        by_model.setdefault(s.model, []).append(s)
    return "; ".join(f"{len(group)} stores of {model} (e.g. "
                     + ", ".join(f"{s.path.parent.name}/{s.path.name}" for s in group[:2]) + ")"
                     for model, group in by_model.items())


def write_report(stores, out, *, command_line: str = "", only=None, options: dict | None = None) -> Path:
    """Analyse ``stores`` (paths to stores or folders of stores) into folder ``out``; return report.md's path.
    ``options``: JSON-ready values the analyses read beyond the stores (``data.Recordings.options``, e.g.
    the feature analysis's "sae"), kept in provenance.json.

    Writes tables/NAME.csv for every table, figures/NAME.png for every figure (provenance in the PNG
    metadata), provenance.json, report.md (provenance, every table, every figure with its caption,
    and a note for every analysis that was skipped and why) and report.html (``html_report``: the same
    tables as interactive plots, the attention viewer and the decoding scrubber). Raises ``UsageError`` before writing
    anything if a path is not a readable store.
    """
    recordings = load(stores)
    if not recordings.stores and not recordings.results:
        raise UsageError("no stores found in " + ", ".join(map(str, stores)))
    recordings.options = dict(options or {})
    out = check_out(out)
    outcomes = run_analyses(recordings, only)
    provenance = {
        "command_line": command_line, "toolkit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "intervals": INTERVALS,
        "stores": [{"path": str(s.path), "model": s.model, "model_id": s.model_id, "family": s.family,
                    "weights_fingerprint": s.fingerprint, "seed": s.seed, "n_relevant": s.n_relevant,
                    "n_distractor": s.n_distractor, "rows": s.n_rows, "status": s.status,
                    "command_line": s.command_line} for s in recordings.stores],
        "result_stores": [{"path": str(path), "kind": kind} for kind, paths in recordings.results.items()
                          for path in paths],
        **({"options": recordings.options} if recordings.options else {}),
    }
    with output_folder(out):
        (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        for outcome in outcomes:
            for name, frame in outcome.tables.items():
                frame.to_csv(out / "tables" / f"{name}.csv", index=False, float_format="%.6g")
            outcome.figures = save_figures(outcome.figures, out / "figures",
                                           stamp(command_line, provenance["created"]), outcome.notes)
        html_notes = write_page(out / "report.html", recordings, outcomes, provenance)
        path = out / "report.md"
        path.write_text(render(recordings, outcomes, provenance) + "".join(f"\n- {note}" for note in html_notes))
    return path


def write_page(path: Path, recordings, outcomes, provenance: dict) -> list[str]:
    """Write report.html (``html_report.write_html``) from the outcomes; return notes for report.md (what
    the page leaves out, or why it could not be written: the page is never worth the report)."""
    from mdlm_interp.analyses.html_report import Section, write_html

    sections = [Section(o.title, o.paragraph, o.notes, o.tables, o.shown, o.skipped) for o in outcomes]
    try:
        notes = write_html(path, title="mdlm-interp report", provenance=provenance, sections=sections,
                           recordings=recordings)
    except Exception as error:  # e.g. plotly missing; the Markdown report stands
        path.unlink(missing_ok=True)
        return [f"report.html could not be written ({type(error).__name__}: {first_line(error)})."]
    return [f"report.html: {note}" for note in notes]


def render(recordings, outcomes, provenance) -> str:
    """Return report.md's text."""
    lines = ["# mdlm-interp report", ""]
    lines += [f"Made by `{provenance['command_line']}` with mdlm-interp {provenance['toolkit_version']} on "
              f"{provenance['created']}. Intervals: {provenance['intervals']}. Tables are in `tables/`, figures in "
              "`figures/`, the provenance of every store in `provenance.json`.", ""]
    lines += ["## Stores", ""]
    stores = [{"store": str(s.path), "model": s.model, "family": s.family, "relevant": s.n_relevant,
               "distractor": s.n_distractor, "seed": s.seed, "rows": f"{s.n_rows}/{s.n_planned}",
               "status": s.status, "recorded": ", ".join(g for g in s.groups if g != "examples"),
               "weights": s.fingerprint[:19]} for s in recordings.stores]
    lines += [markdown_table(stores), ""] if stores else []
    if recordings.results:
        lines += ["Result stores: " + ", ".join(f"{path} ({kind})" for kind, paths in recordings.results.items()
                                                for path in paths) + ".", ""]
    incomplete = [s for s in recordings.stores if s.status != "complete"]
    if incomplete:
        lines += [f"{len(incomplete)} store(s) are incomplete (their committed rows are analysed): "
                  + ", ".join(s.path.name for s in incomplete) + ".", ""]
    lines += [f"- {note}" for note in recordings.notes] + ([""] if recordings.notes else [])
    for outcome in outcomes:
        lines += [f"## {outcome.title}", ""]
        lines += [f"- {note}" for note in outcome.notes] + ([""] if outcome.notes else [])
        if outcome.skipped:
            lines += [f"Skipped: {outcome.skipped}.", ""]
            continue
        lines += [outcome.paragraph, ""]
        for figure in outcome.figures:
            lines += [f"![{figure.name}](figures/{figure.name}.png)", "", figure.caption, ""]
        for caption, frame in outcome.shown.items():
            lines += [f"**{caption}**", "", markdown_table(frame.to_dict("records")), ""]
        lines += ["Tables: " + ", ".join(f"[tables/{name}.csv](tables/{name}.csv)" for name in outcome.tables), ""]
    skipped = [o for o in outcomes if o.skipped]
    if skipped:
        lines += ["## Skipped analyses", ""] + [f"- {o.title}: {o.skipped}." for o in skipped] + [""]
    return "\n".join(lines)


def markdown_table(records: list) -> str:
    """Return a list of dicts as a GitHub markdown table (floats to 3 decimals, booleans as yes/no)."""
    if not records:
        return "(no rows)"
    cut = len(records) > MAX_REPORT_ROWS
    shown = records[:MAX_REPORT_ROWS]
    columns = list(records[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for record in shown:
        lines.append("| " + " | ".join(_cell(record.get(c)) for c in columns) + " |")
    if cut:
        lines.append(f"\n({len(records) - MAX_REPORT_ROWS} more rows in the CSV)")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    try:
        import pandas as pd

        if pd.isna(value):
            return "-"
    except (TypeError, ValueError):
        pass
    return str(value).replace("|", "\\|").replace("\n", "\\n")  # a line break would end the table row


def console_table(out) -> str:
    """Return the pooled rows (task "all") of OUT/tables/inverse_scaling.csv as an aligned text table."""
    import pandas as pd

    path = Path(out) / "tables" / "inverse_scaling.csv"
    if not path.exists():
        return "(no inverse-scaling table)"
    frame = pd.read_csv(path)
    frame = frame[frame["task"] == "all"]
    text = pd.DataFrame({
        "model": frame["model"], "setting": [f"{r}+{d}" for r, d in zip(frame["n_relevant"], frame["n_distractor"])],
        "placement": frame["placement"], "filler": frame["filler"].map({True: "yes", False: "no"}),
        "masks": frame["masks"], "n": frame["n"],
        "accuracy [95% CI]": [f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in
                              zip(frame["accuracy"], frame["ci_low"], frame["ci_high"])],
        "p(answer)": frame["p_answer"].map("{:.3f}".format), "entropy": frame["entropy"].map("{:.3f}".format),
    })
    return text.to_string(index=False)
