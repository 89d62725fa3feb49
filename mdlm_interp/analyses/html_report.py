"""report.html: one self-contained page to explore a report in a browser (no network request when opened).

It holds the report's tables and, drawn from the same tables, interactive plots (plotly.js, embedded from
the ``plotly`` package: hover shows a value with its interval, clicking a legend entry hides a series);
patching heatmaps (layer x position group or head; hover: cell, recovery with its interval, effect in
logits, n); an attention viewer for stores recorded with ``record --keep-examples K`` (pick an example,
its condition, a layer and a head: the prompt's tokens are shaded by that head's attention from the
readout position, masks and fillers marked); and a decoding scrubber for ``generate --trace`` files
(a slider over steps: which positions are still masked, what each proposes and with what confidence).

Size: plotly.js is about 4.8 MB; the plots and tables add little (their numbers); the attention rows cost
about 2.7 bytes per (token, layer, head) of each kept example (uint16, base64) and are embedded up to
``ATTENTION_BUDGET`` bytes, the traces up to ``TRACE_BUDGET`` (what does not fit is left out with a note).
The page's script is ``html/report.js``, its style ``html/report.css`` (package data).
"""

import base64
import html
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

ATTENTION_BUDGET = 10_000_000  # bytes of encoded attention rows in one report.html
TRACE_BUDGET = 1_000_000  # bytes of decode-trace data in one report.html
DECODED_ROWS = 2  # rows per store and condition of record --decode stores in the scrubber
MAX_HTML_ROWS = 400  # longer tables are cut in the page (the CSV keeps every row)
SERIES = ["model", "comparison", "n_relevant", "n_distractor", "task", "decoder", "placement", "filler", "direction",
          "site", "masks", "steps", "group"]
# table -> (x column, value columns); the intervals are found by name (``interval_columns``)
LINE_PLOTS = {
    "inverse_scaling": ("masks", ["accuracy", "p_answer", "entropy"]),
    "mask_drop": ("masks", ["drop"]),
    "filler_control": ("masks", ["difference"]),
    "attribution": ("masks", ["mask", "last50", "nonmask"]),
    "attention_summary": ("masks", ["from_answer", "from_context", "relevant"]),
    "attention_layers": ("layer", ["from_answer", "relevant"]),
    "logit_lens": ("layer", ["p_answer", "top1", "entropy"]),
    "iterative_accuracy": ("masks", ["one_step_accuracy", "iterative_accuracy", "unmask_fraction"]),
    "decode_trajectory": ("step", ["p_answer", "mask_attention"]),
    "accuracy": ("masks", ["accuracy"]),
    "accuracy_change": ("masks", ["difference"]),
}
POOLED = {"task": "all"}  # rows kept for plots when a table has the column (per-task rows stay in the tables)


@dataclass
class Section:
    """One part of the page: title, findings paragraph, notes, all tables (name -> DataFrame), the tables
    shown (caption -> DataFrame), or the reason it was skipped."""

    title: str
    paragraph: str = ""
    notes: list = field(default_factory=list)
    tables: dict = field(default_factory=dict)
    shown: dict = field(default_factory=dict)
    skipped: str | None = None


def write_html(path, *, title: str, provenance: dict, sections: list, recordings=None) -> list[str]:
    """Write report.html at ``path`` from ``sections`` (``Section``) and, when given, ``recordings``
    (``data.Recordings``: stores with attention rows feed the attention viewer, trace files in
    ``recordings.results["trace"]`` the decoding scrubber); return notes on what was left out (sentences)."""
    import plotly.offline

    from mdlm_interp.store.layout import first_line

    notes = []
    data = {"plots": [], "attention": None, "traces": []}
    for index, section in enumerate(sections):
        for name, frame in section.tables.items():
            try:
                plots = plots_of(name, frame)
            except (KeyError, ValueError, TypeError, IndexError) as error:  # one table's plots never cost the page
                notes.append(f"The plots of tables/{name}.csv could not be drawn ({type(error).__name__}: "
                             f"{first_line(error)}); the table holds the numbers.")
                continue
            for plot in plots:
                plot["section"] = index
                data["plots"].append(plot)
    if recordings is not None:
        data["attention"], found = attention_examples(recordings)
        notes += found
        data["traces"], found = decode_traces(recordings.results.get("trace", []))
        notes += found
        data["traces"] += recorded_decodes(recordings)
    page = render_page(title, provenance, sections, data, notes, plotly.offline.get_plotlyjs())
    Path(path).write_text(page, encoding="utf-8")
    return notes


def number(value) -> str:
    """Return a table value as the page shows it: floats to 3 decimals, NaN as "-" (``report._cell``)."""
    from mdlm_interp.analyses.report import _cell

    return _cell(value.item() if isinstance(value, np.generic) else value)


def interval_columns(frame, column: str) -> tuple | None:
    """Return the (low, high) columns of ``column`` in ``frame``, or None: COLUMN_low/_high, the prefix before
    "_accuracy" or "_mass" with _low/_high, ci_low/ci_high for accuracy, low/high for a lone difference."""
    stem = column.removesuffix("_accuracy")
    for low, high in [(f"{column}_low", f"{column}_high"), (f"{stem}_low", f"{stem}_high"),
                      *([("ci_low", "ci_high")] if column == "accuracy" else []),
                      *([("low", "high")] if column in ("difference", "drop") else [])]:
        if low in frame and high in frame:
            return low, high
    return None


def plots_of(name: str, frame) -> list[dict]:
    """Return the plots of table ``name``: line plots (``LINE_PLOTS``), the attention heatmaps (table
    attention_heads) or the patching heatmaps (table patching_cells); each a dict id, title, caption, data,
    layout (plotly figure JSON)."""
    if frame is None or frame.empty:
        return []
    if name == "patching_cells":
        return patching_heatmaps(frame)
    if name == "attention_heads":
        return head_heatmaps(frame)
    if name not in LINE_PLOTS:
        return []
    x, values = LINE_PLOTS[name]
    for column, kept in POOLED.items():
        if column in frame:
            frame = frame[frame[column] == kept]
    return [line_plot(name, frame, x, value) for value in values if value in frame and x in frame]


def series_columns(frame, x: str) -> list[str]:
    """Return the columns that tell the series of a plot apart: those of ``SERIES`` with several values."""
    return [c for c in SERIES if c in frame and c != x and frame[c].nunique(dropna=False) > 1]


def line_plot(name: str, frame, x: str, value: str) -> dict:
    """Return a plotly line plot of ``value`` against ``x``, a series per setting, error bars and hover from
    the value's interval columns."""
    interval = interval_columns(frame, value)
    by = series_columns(frame, x)
    traces = []
    for key, part in (frame.groupby(by, sort=False, dropna=False) if by else [((), frame)]):
        key = key if isinstance(key, tuple) else (key,)
        part = part.sort_values(x)
        label = ", ".join(f"{c} {number(v)}" for c, v in zip(by, key)) or value
        hover = []
        for _, row in part.iterrows():
            text = f"{x} {number(row[x])}: {value} {number(row[value])}"
            if interval:
                text += f" [{number(row[interval[0]])}, {number(row[interval[1]])}]"
            n = row.get("n", row.get("n_pairs"))
            if n is not None:
                text += f" (n {number(n)})"
            hover.append(text)
        trace = {"type": "scatter", "mode": "lines+markers", "name": label, "x": jsonable(part[x]),
                 "y": jsonable(part[value]), "customdata": hover, "hovertemplate": "%{customdata}<extra></extra>"}
        if interval:
            trace["error_y"] = {"type": "data", "symmetric": False, "array": jsonable(part[interval[1]] - part[value]),
                                "arrayminus": jsonable(part[value] - part[interval[0]]), "thickness": 1}
        traces.append(trace)
    title = f"{name}: {value} against {x}"
    return {"id": f"plot-{name}-{value}", "title": title, "data": traces,
            "caption": f"{value} (with its interval where the table has one) against {x}; from tables/{name}.csv. "
                       "Click a legend entry to hide or show its series.",
            "layout": {"title": {"text": title}, "xaxis": {"title": {"text": x}}, "yaxis": {"title": {"text": value}},
                       "legend": {"title": {"text": ", ".join(by)}}, "height": 420}}


def jsonable(values) -> list:
    """Return a column as a JSON-ready list (NaN as None)."""
    return [None if isinstance(v, float) and math.isnan(v) else v for v in np.asarray(values).tolist()]


def head_heatmaps(frame) -> list[dict]:
    """Return layer x head heatmaps (viridis) of the attention mass from the readout position on the masks,
    one per model and setting at its largest mask count without filler."""
    frame = frame[~frame["filler"].astype(bool)] if "filler" in frame else frame
    out = []
    keys = [c for c in ("model", "n_relevant", "n_distractor", "placement") if c in frame]
    for key, part in frame.groupby(keys, sort=False):
        part = part[part["masks"] == part["masks"].max()]
        label = " ".join(map(str, key if isinstance(key, tuple) else (key,)))
        grid = part.pivot(index="layer", columns="head", values="from_answer")
        low = part.pivot(index="layer", columns="head", values="from_answer_low")
        high = part.pivot(index="layer", columns="head", values="from_answer_high")
        text = [[f"layer {l}, head {h}: from_answer {number(grid.loc[l, h])} [{number(low.loc[l, h])}, "
                 f"{number(high.loc[l, h])}]" for h in grid.columns] for l in grid.index]
        masks = int(part["masks"].max())
        title = f"attention from the readout position on the masks, {label}, {masks} masks"
        out.append({"id": f"plot-heads-{len(out)}", "title": title, "caption": "Attention mass per layer and head "
                    "(tables/attention_heads.csv, from_answer); hover for the interval.",
                    "data": [{"type": "heatmap", "z": jsonable(grid.to_numpy()), "x": jsonable(grid.columns),
                              "y": jsonable(grid.index), "text": text, "hovertemplate": "%{text}<extra></extra>",
                              "colorscale": "Viridis", "colorbar": {"title": {"text": "mass"}}}],
                    "layout": {"title": {"text": title}, "xaxis": {"title": {"text": "head"}, "dtick": 1},
                               "yaxis": {"title": {"text": "layer"}, "dtick": 1}, "height": 420}})
    return out


def patching_heatmaps(cells) -> list[dict]:
    """Return one heatmap per (model, comparison, direction, site): layer x position group for resid_pre,
    attn_out and mlp_out, layer x head per head group for z; colour: recovery on a diverging scale centred
    at zero (the effect in logits where recovery is undefined everywhere); hover: cell, recovery with its
    interval, effect in logits, n. Each heatmap's ``cells`` list (row, column, hover text) serves tests."""
    out = []
    keys = ["model", "comparison", "direction", "site"]
    for key, part in cells.groupby(keys, sort=False):
        site = key[3]
        panels = [(p, part[part["position"] == p], "head") for p in dict.fromkeys(part["position"])] \
            if site == "z" else [(None, part, "position")]
        for group, panel, column in panels:
            rows = sorted(panel["layer"].unique())
            columns = list(dict.fromkeys(panel[column]))
            defined = panel["recovery"].notna().any()
            colour = "recovery" if defined else "effect"
            z = [[None] * len(columns) for _ in rows]
            text = [[""] * len(columns) for _ in rows]
            for _, cell in panel.iterrows():
                i, j = rows.index(cell["layer"]), columns.index(cell[column])
                value = cell[colour]
                z[i][j] = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
                text[i][j] = patch_hover(cell, site)
            title = f"patching {site}{f' at {group}' if group else ''}: {key[2]}, {key[0]}, {key[1]}"
            out.append({"id": f"plot-patching-{len(out)}", "title": title, "kind": "patching",
                        "caption": f"Colour: {colour}" + ("" if defined else " in logits (recovery is undefined: the "
                                                          "clean - corrupt gap is too small)")
                        + "; from tables/patching_cells.csv.",
                        "data": [{"type": "heatmap", "z": z, "x": [str(c) for c in columns], "y": jsonable(rows),
                                  "text": text, "hovertemplate": "%{text}<extra></extra>", "colorscale": "RdBu",
                                  "zmid": 0, "hoverongaps": False, "colorbar": {"title": {"text": colour}}}],
                        "layout": {"title": {"text": title}, "xaxis": {"title": {"text": column}, "type": "category"},
                                   "yaxis": {"title": {"text": "layer"}, "dtick": 1}, "height": 420}})
    return out


def patch_hover(cell, site: str) -> str:
    """Return a patching cell's hover text: "layer L, position P (head H): recovery R [lo, hi], effect E logits, n N"."""
    where = f"layer {cell['layer']}, " + (f"head {cell['head']} at {cell['position']}" if site == "z"
                                         else f"position {cell['position']}")
    return (f"{where}: recovery {number(cell['recovery'])} [{number(cell['recovery_low'])}, "
            f"{number(cell['recovery_high'])}], effect {number(cell['effect'])} logits, n {number(cell['n'])}")


def encode_weights(values: np.ndarray) -> str:
    """Return attention weights in [0, 1] as base64 of little-endian uint16 (value x 65535, rounded)."""
    quantised = np.rint(np.clip(values, 0, 1) * 65535).astype("<u2")
    return base64.b64encode(quantised.tobytes()).decode("ascii")


def token_kinds(example) -> list[str]:
    """Return each input token's role for the viewer: "answer" (the slot), "mask" or "filler" (after it),
    "relevant", "query" or "" (other context), from a row of the store's /examples."""
    kinds = [""] * int(example["input_length"])
    for start, end in np.asarray(example["relevant_spans"]).reshape(-1, 2):
        if start >= 0:
            kinds[start:end] = ["relevant"] * (end - start)
    kinds[int(example["query_start"]):int(example["query_end"])] = \
        ["query"] * (int(example["query_end"]) - int(example["query_start"]))
    after = "filler" if bool(example["filler"]) else "mask"
    kinds[int(example["masks_start"]):int(example["masks_end"])] = \
        [after] * (int(example["masks_end"]) - int(example["masks_start"]))
    if int(example["answer_position"]) < len(kinds):
        kinds[int(example["answer_position"])] = "answer"
    return kinds


def token_texts(model_id: str, ids) -> dict:
    """Return token id -> text for ``ids`` through the store model's tokenizer ("id N" without one)."""
    from mdlm_interp.analyses.decode import tokenizer_for

    tokenizer, _ = tokenizer_for(model_id)
    unique = sorted({int(i) for i in ids})
    if tokenizer is None:
        return {i: f"id {i}" for i in unique}
    return {i: tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False) for i in unique}


def attention_examples(recordings, budget: int = ATTENTION_BUDGET) -> tuple[dict | None, list]:
    """Return the attention viewer's data and notes: per store with attention_rows, its kept rows (example,
    condition, token ids, token kinds, readout position, weights [layer, head, token] encoded), examples in
    order with all their conditions, until ``budget`` bytes; None when no store kept attention rows."""
    from mdlm_interp.models.families import FAMILIES
    from mdlm_interp.models.readout import readout_position
    from mdlm_interp.store import open_store

    stores, notes, used, left_out = [], [], 0, 0
    for index, info in enumerate(recordings.stores):
        if "attention_rows" not in info.groups:
            continue
        rows = recordings.rows[recordings.rows["store"] == index]
        with open_store(info.path) as store:
            stored = store.array("attention_rows/from_readout")  # per row: [token, layer, head] flattened, or empty
            kept = [i for i in rows["row_in_store"] if len(stored[i])]
            examples = store.examples
            spans = store.array("examples/relevant_spans")
            offset = FAMILIES[info.family].prediction_offset if info.family in FAMILIES else 0
            entries = []
            for example_index in dict.fromkeys(int(examples.loc[i, "example"]) for i in kept):
                of_example = [i for i in kept if int(examples.loc[i, "example"]) == example_index]
                size = sum(math.ceil(len(stored[i]) * 2 / 3) * 4 for i in of_example)  # base64 of uint16
                if used + size > budget:
                    left_out += len(of_example)
                    continue
                used += size
                for i in of_example:
                    example = {**examples.loc[i].to_dict(), "relevant_spans": spans[i]}
                    n = int(example["input_length"])
                    weights = np.asarray(stored[i], dtype=np.float32).reshape(n, info.dims["layers"], info.dims["heads"])
                    entries.append({
                        "example": example_index, "task": str(example["task"]), "masks": int(example["masks"]),
                        "filler": bool(example["filler"]), "placement": str(example["placement"]),
                        "ids": [int(t) for t in store.tokens(i)], "kinds": token_kinds(example),
                        "readout": readout_position(int(example["answer_position"]), offset),
                        "weights": encode_weights(np.moveaxis(weights, 0, -1))})
        texts = token_texts(info.model_id, [t for e in entries for t in e["ids"]])
        stores.append({"label": f"{info.model} ({info.path.name})", "layers": info.dims["layers"],
                       "heads": info.dims["heads"], "tokens": {str(k): v for k, v in texts.items()}, "rows": entries})
    if left_out:
        notes.append(f"The attention viewer leaves out {left_out} kept rows: report.html embeds at most "
                     f"{budget / 1e6:g} MB of attention rows.")
    return ({"stores": stores} if stores else None), notes


def decode_traces(paths, budget: int = TRACE_BUDGET) -> tuple[list, list]:
    """Return the decoding scrubber's data and notes: per trace file and prompt, the generated region's
    canvas per step (token ids [steps + 1, tokens]), proposals and confidences [steps, tokens], and the
    step at which each position was unmasked; traces past ``budget`` bytes are left out with a note."""
    import h5py

    traces, notes, used = [], [], 0
    for path in paths:
        with h5py.File(path, "r") as file:
            start = int(file.attrs["prompt_length"])
            ids, proposed = file["ids"][:, :, start:], file["proposed"][:, :, start:]
            confidence, unmasked = file["confidence"][:, :, start:], file["unmasked"][:, :, start:]
            model_id = file.attrs["model_id"]
            prompts = json.loads(file.attrs["prompts"]) if "prompts" in file.attrs else []
        size = ids.nbytes + proposed.nbytes + confidence.nbytes
        if used + size > budget:
            notes.append(f"The decoding scrubber leaves out {Path(path).name}: report.html embeds at most "
                         f"{budget / 1e6:g} MB of traces.")
            continue
        used += size
        texts = token_texts(model_id, np.concatenate([ids.ravel(), proposed.ravel()]))
        for row in range(ids.shape[1]):
            done = unmasked[:, row]  # [steps, tokens]
            unmask_step = np.where(done.any(0), done.argmax(0), -1)
            traces.append({"label": f"{Path(path).name} prompt {row}"
                           + (f": {prompts[row][-40:]!r}" if row < len(prompts) else ""),
                           "ids": ids[:, row].tolist(), "proposed": proposed[:, row].tolist(),
                           "confidence": [[None if not np.isfinite(c) else round(float(c), 4) for c in step]
                                          for step in confidence[:, row]],
                           "unmask_step": unmask_step.tolist(), "tokens": {str(k): v for k, v in texts.items()}})
    return traces, notes


def recorded_decodes(recordings, per_condition: int = DECODED_ROWS) -> list[dict]:
    """Return the scrubber's entries for stores recorded with ``record --decode``: the first ``per_condition``
    rows of each condition, per step the masks left among the answer slot and the tokens after it, and,
    while the slot is masked, its proposed token and p(answer) (a store keeps no other position's state)."""
    from mdlm_interp.store import open_store

    entries = []
    for index, info in enumerate(recordings.stores):
        if "decode" not in info.groups:
            continue
        rows = recordings.rows[recordings.rows["store"] == index]
        picked = rows.groupby(["placement", "filler", "masks"], sort=False).head(per_condition)
        with open_store(info.path) as store:
            decode = {name: store.decode[name] for name in ("steps", "unmask_step", "masks_left", "step_predicted_id",
                                                            "step_p_answer", "predicted_id", "confidence")}
        ids = []
        for _, row in picked.iterrows():
            i, steps = int(row["row_in_store"]), int(decode["steps"][int(row["row_in_store"])])
            proposed = decode["step_predicted_id"][i][:steps].tolist()
            ids += [int(row["answer_id"]), int(decode["predicted_id"][i]), *(p for p in proposed if p >= 0)]
            condition = f"{int(row['masks'])} masks" + (" (filler)" if row["filler"] else "")
            entries.append({"kind": "record", "label": f"{info.path.name} {row['task']} prompt {int(row['prompt'])}, "
                            f"{condition}, {row['placement']}", "masks": int(row["masks"]),
                            "masks_left": decode["masks_left"][i][:steps].tolist(), "proposed": proposed,
                            "p_answer": jsonable(np.round(decode["step_p_answer"][i][:steps].astype(float), 4)),
                            "unmask_step": int(decode["unmask_step"][i]), "decoded": int(decode["predicted_id"][i]),
                            "confidence": round(float(decode["confidence"][i]), 4), "answer": int(row["answer_id"])})
        texts = {str(k): v for k, v in token_texts(info.model_id, ids).items()}
        for entry in entries:
            entry.setdefault("tokens", texts)
    return entries


def html_table(frame) -> str:
    """Return a DataFrame as an HTML table (values as in report.md, cut at ``MAX_HTML_ROWS`` rows)."""
    head = "".join(f'<th scope="col">{html.escape(str(c))}</th>' for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(number(v))}</td>" for v in row) + "</tr>"
                   for row in frame.head(MAX_HTML_ROWS).itertuples(index=False))
    more = f"<p>({len(frame) - MAX_HTML_ROWS} more rows in the CSV)</p>" if len(frame) > MAX_HTML_ROWS else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def render_page(title: str, provenance: dict, sections: list, data: dict, notes: list, plotly_js: str) -> str:
    """Return the page's HTML: provenance, the attention viewer, the decoding scrubber, then one part per
    section (notes, paragraph, plots, tables), with plotly.js, the data (JSON) and the page's script inline."""
    template = resources.files("mdlm_interp.analyses") / "html"
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>Made by <code>{html.escape(provenance.get('command_line', ''))}</code> with mdlm-interp "
             f"{html.escape(str(provenance.get('toolkit_version', '')))} on {html.escape(provenance.get('created', ''))}. "
             f"Intervals: {html.escape(str(provenance.get('intervals', '')))}.</p>"]
    parts += [f"<p class='note'>{html.escape(note)}</p>" for note in notes]
    parts.append('<nav aria-label="sections"><ul>' + "".join(
        f'<li><a href="#section-{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(sections)) + "</ul></nav>")
    parts.append((template / "viewers.html").read_text())
    for index, section in enumerate(sections):
        parts.append(f'<section id="section-{index}" aria-labelledby="section-{index}-title">'
                     f'<h2 id="section-{index}-title">{html.escape(section.title)}</h2>')
        parts += [f"<p class='note'>{html.escape(note)}</p>" for note in section.notes]
        if section.skipped:
            parts.append(f"<p>Skipped: {html.escape(section.skipped)}.</p></section>")
            continue
        if section.paragraph:
            parts.append(f"<p>{html.escape(section.paragraph)}</p>")
        parts.append(f'<div class="plots" id="plots-{index}"></div>')
        for caption, frame in section.shown.items():
            parts.append(f"<details><summary>{html.escape(caption)}</summary>{html_table(frame)}</details>")
        parts.append("</section>")
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src 'unsafe-inline' "
            "'unsafe-eval'; style-src 'unsafe-inline'; img-src data: blob:; font-src data:\">"
            f"<title>{html.escape(title)}</title><style>{(template / 'report.css').read_text()}</style>"
            f"<script>{plotly_js}</script></head><body><main>{''.join(parts)}</main>"
            f"<script type=\"application/json\" id=\"report-data\">{payload}</script>"
            f"<script>{(template / 'report.js').read_text()}</script></body></html>\n")
