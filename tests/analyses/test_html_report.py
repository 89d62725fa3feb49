"""report.html in a real headless Chromium (Debian's /usr/bin/chromium driven by playwright, network off):
no console error, the attention viewer shows the stored row of the chosen head, a patching cell's hover is
the table's value, the decoding scrubber shows the trace's masked positions; and record --keep-examples."""

import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli_run import run_cli
from synthetic_results import patching_store

CHROMIUM = "/usr/bin/chromium"
TASK = "adjective+largest"
KEEP = 2


@pytest.fixture(scope="module")
def report(tiny_model, tiny_checkpoint, tmp_path_factory):
    """Return (report folder, record store, trace file, model): a record store with kept attention rows,
    a synthetic patching store and a generate --trace file, analysed together."""
    from mdlm_interp.analyses.report import write_report
    from mdlm_interp.record import record

    root = tmp_path_factory.mktemp("html")
    lm = tiny_model("llada")
    store = record(lm, out=root / "record.h5", tasks=[TASK, "verb+smallest"], masks=[1, 4], filler=" .", n=2,
                   n_relevant=2, n_distractor=2, record=("attention",), keep_examples=KEEP, decode="llada",
                   progress=False)
    patching_store(root / "patch.h5", {"examples": [(0, 0), (0, 1), (1, 0)], "clean": [3.0, 3.0, 4.0],
                                       "corrupt": [0.0, 1.0, 0.0], "patched": [1.0, 2.5, 2.0]})
    trace = root / "trace.h5"
    result = run_cli("generate", "--model", tiny_checkpoint("llada"), "--prompt", "Input: dog, 3\nOutput:",
                     "--prompt", "Input: 7\nOutput:", "--gen-length", "5", "--trace", trace)
    assert result.returncode == 0, result.stderr
    write_report([store, root / "patch.h5", trace], root / "report", only=["inverse_scaling", "patching"])
    return root / "report", store, trace, lm


@pytest.fixture(scope="module")
def page(report):
    """Return (page, console errors, requests beyond the file) of report.html open in headless Chromium."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's chromium package: apt-get install -y chromium; "
                    "make setup does so when run as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    profile = tempfile.mkdtemp(prefix="mdlm-chromium-")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, offline=True, viewport={"width": 1280, "height": 800},
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        opened = context.new_page()
        errors, requests = [], []
        opened.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        opened.on("pageerror", lambda error: errors.append(str(error)))
        opened.on("request", lambda request: requests.append(request.url))
        opened.goto((report[0] / "report.html").as_uri())
        opened.wait_for_selector("#attn-tokens .tok")
        yield opened, errors, [url for url in requests if not url.startswith("file:")]
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


def test_record_keeps_the_attention_rows_of_the_first_examples_of_each_condition(report):
    from mdlm_interp.store import open_store

    _, path, _, _ = report
    with open_store(path) as store:
        examples, dims = store.examples, store.dims
        rows = store.array("attention_rows/from_readout")
        mass = store.array("attention/mask_mass_from_answer")
    kept = [i for i in range(len(rows)) if len(rows[i])]
    # prompt 0 of each task in turn: the first K examples of every condition are prompt 0 of both tasks
    assert examples.loc[kept, "example"].tolist() == [0, 2] * 3
    for i in kept:
        row = examples.loc[i]
        weights = rows[i].reshape(row["input_length"], dims["layers"], dims["heads"])
        assert np.allclose(weights.sum(0), 1, atol=1e-5)  # a softmax row per layer and head
        # the probes' mass on the tokens after the slot is the kept row summed over them
        assert np.allclose(weights[row["masks_start"]:row["masks_end"]].sum(0), mass[i], atol=1e-5)


def test_the_page_makes_no_request_and_logs_no_error(page):
    _, errors, requests = page
    assert errors == [] and requests == []


def stored_weights(path, store_row: int, layer: int, head: int) -> np.ndarray:
    from mdlm_interp.store import open_store

    with open_store(path) as store:
        row = store.examples.loc[store_row]
        values = store.array("attention_rows/from_readout")[store_row]
        return values.reshape(row["input_length"], store.dims["layers"], store.dims["heads"])[:, layer, head]


def shown_weights(opened) -> tuple[np.ndarray, list]:
    tokens = opened.locator("#attn-tokens .tok")
    weights = np.array([float(w) for w in tokens.evaluate_all("els => els.map(e => e.dataset.weight)")])
    colours = tokens.evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    return weights, colours


def test_attention_viewer_shades_tokens_by_the_chosen_heads_stored_row(page, report):
    opened, _, _ = page
    _, path, _, _ = report
    opened.select_option("#attn-example", "0")
    opened.select_option("#attn-condition", label="4 masks, random")
    opened.select_option("#attn-layer", "1")
    opened.select_option("#attn-head", "0")
    first, first_colours = shown_weights(opened)
    opened.select_option("#attn-head", "1")
    second, second_colours = shown_weights(opened)
    store_row = 2 * 2  # condition 4 masks (second), task 0, prompt 0: rows are (condition, task, prompt)
    assert np.allclose(first, stored_weights(path, store_row, 1, 0), atol=2e-5)
    assert np.allclose(second, stored_weights(path, store_row, 1, 1), atol=2e-5)
    assert not np.allclose(first, second) and first_colours != second_colours
    kinds = opened.locator("#attn-tokens .tok").evaluate_all("els => els.map(e => e.className)")
    assert sum("mask" in k.split() for k in kinds) == 3 and sum("answer" in k.split() for k in kinds) == 1
    opened.select_option("#attn-condition", label="4 masks (filler), random")  # the same prompt with fillers
    kinds = opened.locator("#attn-tokens .tok").evaluate_all("els => els.map(e => e.className)")
    assert sum("filler" in k.split() for k in kinds) == 3 and not any("mask" in k.split() for k in kinds)
    assert np.allclose(shown_weights(opened)[0], stored_weights(path, 2 * 2 * 2, 1, 1), atol=2e-5)


def test_a_patching_cells_hover_text_is_the_tables_value(page, report):
    from mdlm_interp.analyses.html_report import number

    opened, _, _ = page
    cells = pd.read_csv(report[0] / "tables" / "patching_cells.csv")
    plot = opened.locator(".plot.patching").first
    title = plot.evaluate("el => el.layout.title.text")
    plot.scroll_into_view_if_needed()
    # the mouse over the cell of row 0, column 1 (plotly's axes map data to pixels)
    x, y = plot.evaluate("""el => { const xa = el._fullLayout.xaxis, ya = el._fullLayout.yaxis;
        const box = el.getBoundingClientRect();
        return [box.left + xa._offset + xa.d2p(el.data[0].x[1]), box.top + ya._offset + ya.d2p(el.data[0].y[0])]; }""")
    opened.mouse.move(x, y)
    hover = plot.locator(".hovertext").text_content()
    found = re.match(r"layer (\d+), position (\S+): recovery (\S+) \[(\S+), (\S+)\], effect (\S+) logits, n (\d+)", hover)
    assert found, hover
    site, direction = re.match(r"patching (\S+): (\S+),", title).groups()
    cell = cells[(cells["site"] == site) & (cells["direction"] == direction) & (cells["layer"] == int(found[1]))
                 & (cells["position"] == found[2])].iloc[0]
    assert list(found.groups()[2:]) == [number(float(cell[c])) for c in ("recovery", "recovery_low", "recovery_high",
                                                                         "effect")] + [str(cell["n"])]
    assert found[3] != "-"  # the synthetic runs have a gap: recovery is defined


def test_the_scrubber_at_step_k_shows_the_traces_masked_positions(page, report):
    import h5py

    opened, _, _ = page
    _, _, trace, lm = report
    with h5py.File(trace) as file:
        ids = file["ids"][:, 1, int(file.attrs["prompt_length"]):]  # the generated region of prompt 1, per step
    opened.select_option("#trace-select", index=1)
    for step in (0, 2, len(ids) - 1):
        opened.locator("#trace-step").evaluate(
            f"el => {{ el.value = '{step}'; el.dispatchEvent(new Event('input')); }}")
        masked = opened.locator("#trace-tokens .tok").evaluate_all("els => els.map(e => e.dataset.masked === 'true')")
        assert masked == (ids[step] == lm.mask_token_id).tolist()
    assert any(ids[2] == lm.mask_token_id) and not any(ids[-1] == lm.mask_token_id)


def test_the_attention_viewer_embeds_whole_examples_within_its_budget(report):
    from mdlm_interp.analyses.data import load
    from mdlm_interp.analyses.html_report import attention_examples

    recordings = load([report[1]])
    everything, notes = attention_examples(recordings)
    rows = everything["stores"][0]["rows"]
    assert notes == [] and [(r["example"], r["masks"], r["filler"]) for r in rows] == \
        [(0, 1, False), (0, 4, False), (0, 4, True), (2, 1, False), (2, 4, False), (2, 4, True)]
    first_example = sum(len(r["weights"]) for r in rows[:3])
    kept, notes = attention_examples(recordings, budget=first_example + 10)
    assert [r["example"] for r in kept["stores"][0]["rows"]] == [0, 0, 0]
    assert len(notes) == 1 and "leaves out 3 kept rows" in notes[0]



def test_line_plots_show_the_tables_values_with_their_intervals_on_hover():
    from mdlm_interp.analyses.html_report import plots_of

    frame = pd.DataFrame({"model": ["m", "m", "m"], "task": ["all", "all", "t"], "filler": [False, False, False],
                          "masks": [5, 1, 1], "n": [20, 20, 10], "accuracy": [0.5, 0.75, 0.1],
                          "ci_low": [0.3, 0.55, 0.0], "ci_high": [0.7, 0.9, 0.4]})
    plot = next(p for p in plots_of("inverse_scaling", frame) if p["id"] == "plot-inverse_scaling-accuracy")
    (trace,) = plot["data"]  # one series: per-task rows stay in the table
    assert trace["x"] == [1, 5] and trace["y"] == [0.75, 0.5]
    assert trace["error_y"]["arrayminus"] == pytest.approx([0.2, 0.2])
    assert trace["customdata"][0] == "masks 1: accuracy 0.750 [0.550, 0.900] (n 20)"


def test_the_scrubber_over_a_record_decode_row_shows_its_answer_slot_and_masks_left(page, report):
    from mdlm_interp.store import open_store

    opened, _, _ = page
    _, path, _, _ = report
    labels = opened.locator("#trace-select option").all_text_contents()
    index = next(i for i, label in enumerate(labels) if label.startswith("record.h5") and "4 masks," in label)
    opened.select_option("#trace-select", index=index)
    task, prompt = re.match(r"record.h5 (\S+) prompt (\d+)", labels[index]).groups()
    with open_store(path) as store:
        examples = store.examples
        row = examples[(examples["task"] == task) & (examples["masks"] == 4) & ~examples["filler"]].index[int(prompt)]
        masks_left, unmask = store.decode["masks_left"][row], int(store.decode["unmask_step"][row])
    for step in range(int(opened.locator("#trace-step").get_attribute("max")) + 1):
        opened.locator("#trace-step").evaluate(f"el => {{ el.value = '{step}'; el.dispatchEvent(new Event('input')); }}")
        slot = opened.locator("#trace-tokens .tok")
        assert slot.get_attribute("data-masked") == ("true" if step <= unmask and step < 4 else "false")
        left = masks_left[step] if step < 4 else 0
        assert f"Before step {step}: {left} of the 4 tokens" in opened.locator("#trace-status").text_content()
