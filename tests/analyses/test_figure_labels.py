"""Figures read back as matplotlib objects: titles name the model, n and condition; head axes carry integer
ticks; no line through fewer than three x values; the readout position is named where attention is read."""

import numpy as np
import pytest

from mdlm_interp.analyses import load
from mdlm_interp.analyses.plotting import figure_title, integer_head_axes, new_figure
from synthetic_stores import HEADS, LAYERS, STEPS, write_store

from cli_run import run_cli

TASKS = ["adjective+largest", "verb+smallest"]
DREAM = "synthetic/dream-mini"  # label "dream-mini"


def rows(masks=(1, 3, 6), n=4, **extra):
    out = []
    for task in TASKS:
        for prompt in range(n):
            for m in masks:
                out.append({"task": task, "prompt": prompt, "masks": m, "correct": m == 1 or prompt % 2 == 0,
                            "p_answer": 0.9 - 0.1 * m + 0.01 * prompt, "grad_mask": 0.1 + 0.05 * prompt,
                            "from_answer": np.full((LAYERS, HEADS), 0.05 * m + 0.01 * prompt), **extra})
    return out


def dream_store(tmp_path, name="s.h5", store_rows=None, **kwargs):
    return write_store(tmp_path / name, store_rows if store_rows is not None else rows(), model_id=DREAM,
                       family="dream", **kwargs)


def modules(*names):
    """The analysis modules (``mdlm_interp.analyses`` exports functions under some of their names)."""
    import importlib

    return [importlib.import_module(f"mdlm_interp.analyses.{name}") for name in names]


def title(figure_out) -> str:
    return figure_out.figure._suptitle.get_text()


def lined(figure) -> list:
    """The data lines of ``figure`` that join points (a line style other than none; reference lines across an
    axis, such as axhline's, are not data)."""
    return [line for ax in figure.axes for line in ax.get_lines() if line.get_transform() is ax.transData
            and line.get_linestyle() not in ("None", "") and len(line.get_xdata()) > 1]


def test_figure_title_names_models_what_condition_and_n():
    assert figure_title(["a", "b", "a"], "logit lens", 2, 3, "random", [8, 8]) == (
        "a, b: logit lens, 2 relevant + 3 distractor examples, placement random, n = 8 per condition")
    assert figure_title(["a"], "x", n=[4, 8, np.nan], per="task") == "a: x, n = 4 to 8 per task"
    assert figure_title([], "ablating heads 0.1", n=5, per="mask count") == "ablating heads 0.1, n = 5 per mask count"


def test_integer_head_axes_put_one_tick_per_head_and_layer():
    figure, axes = new_figure()
    ax = axes[0, 0]
    ax.imshow(np.zeros((2, 5)))
    integer_head_axes(ax, 2, 5)
    assert list(ax.get_xticks()) == [0, 1, 2, 3, 4] and list(ax.get_yticks()) == [0, 1]


def test_heads_on_a_dream_store_are_labelled_from_the_readout_position(tmp_path):
    from mdlm_interp.analyses.heads import head_ranking, paragraph, ranking_figure, shown

    store = dream_store(tmp_path)
    tables = head_ranking(load([store]), resamples=30)
    drawn = ranking_figure(tables["head_ranking"])
    upper = drawn.figure.axes[0]
    assert "from the readout position" in upper.get_ylabel() and "answer slot" not in upper.get_ylabel()
    assert "dream-mini" in title(drawn) and "n = 8 prompts" in title(drawn)
    assert "readout position" in drawn.caption and "position before it for Dream" in drawn.caption
    assert "from the readout position" in next(iter(shown(tables)))
    assert "from the readout position" in paragraph(tables) and "answer slot's attention" not in paragraph(tables)
    printed = run_cli("heads", store, "--seed", "0")
    assert printed.returncode == 0, printed.stderr
    assert "mask mass: attention from the readout position" in printed.stdout


def test_attention_figures_on_a_dream_store_name_the_readout_position_and_integer_heads(tmp_path):
    from mdlm_interp.analyses.attention import ANALYSIS, shown

    tables = ANALYSIS.tables(load([dream_store(tmp_path)]))
    heads_figure, layers_figure = ANALYSIS.figures(tables)
    panel_titles = [ax.get_title() for ax in heads_figure.figure.axes if ax.get_title()]
    assert any("from the readout position" in t for t in panel_titles)
    assert not any("answer" in t for t in panel_titles)
    heatmaps = [ax for ax in heads_figure.figure.axes if ax.get_xlabel() == "head"]
    assert heatmaps and all([t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"] for ax in heatmaps)
    assert all([t.get_text() for t in ax.get_yticklabels()] == ["0", "1"] for ax in heatmaps)
    assert "dream-mini" in title(heads_figure) and "n = 8 per condition" in title(heads_figure)
    assert "from the readout position" in layers_figure.figure.axes[0].get_ylabel()
    assert "dream-mini" in title(layers_figure)
    # masks 3 and 6 only above 1: two x values are points, not a line
    assert lined(layers_figure.figure) == []
    assert any("readout position" in name for name in shown(tables))
    # one count above 1 (masks 1 and 6): no per-layer curves around a single x value
    one = ANALYSIS.figures(ANALYSIS.tables(load([dream_store(tmp_path, "one.h5", rows(masks=(1, 6)))])))
    assert [(f.name, f.figure is None) for f in one] == [("attention_heads_r2_d4_random_m6", False),
                                                          ("attention_layers_r2_d4_random", True)]
    assert "two mask counts above 1" in one[1].caption  # the report's note says why it is not drawn


def test_attribution_lens_and_wrong_prediction_titles_name_model_n_and_condition(tmp_path):
    attribution, lens, wrong_predictions = modules("attribution", "lens", "wrong_predictions")

    recordings = load([dream_store(tmp_path)])
    for module in (attribution, lens, wrong_predictions):
        drawn = module.ANALYSIS.figures(module.ANALYSIS.tables(recordings))
        assert drawn, module.__name__
        for figure in drawn:
            text = title(figure)
            assert text.startswith("dream-mini: "), text
            assert "2 relevant + 4 distractor examples" in text and "placement random" in text
            assert "n = 8 per condition" in text


def test_wrong_predictions_carry_the_wilson_interval_of_the_share_correct(tmp_path):
    from mdlm_interp.analyses.stats import wilson_interval

    (wrong_predictions,) = modules("wrong_predictions")
    drawn = wrong_predictions.ANALYSIS.figures(wrong_predictions.ANALYSIS.tables(load([dream_store(tmp_path)])))
    (container,) = [c for c in drawn[0].figure.axes[0].containers if getattr(c, "has_yerr", False)]
    bounds = np.array([[segment[0][1], segment[1][1]] for segment in container.lines[2][0].get_segments()])
    # masks 1: all 8 correct; masks 3 and 6: the 4 even prompts
    expected = np.stack(wilson_interval(np.array([8, 4, 4]), np.array([8, 8, 8])), 1)
    np.testing.assert_allclose(bounds, expected, atol=1e-9)


def test_two_mask_counts_draw_no_attribution_line_and_lens_lines_span_the_layers(tmp_path):
    attribution, lens = modules("attribution", "lens")

    recordings = load([dream_store(tmp_path, store_rows=rows(masks=(1, 6)))])
    table = attribution.ANALYSIS.tables(recordings)["attribution"].sort_values("masks")
    drawn = attribution.ANALYSIS.figures({"attribution": table})
    assert drawn and lined(drawn[0].figure) == []
    # the bars are the 95% interval of the mean (not the sd), read back from the drawn segments
    container = next(c for c in drawn[0].figure.axes[0].containers if c.get_label() == "mask tokens")
    bounds = np.array([[segment[0][1], segment[1][1]] for segment in container.lines[2][0].get_segments()])
    np.testing.assert_allclose(bounds, table[["mask_low", "mask_high"]].to_numpy(float), rtol=1e-6)
    lens_figure = lens.ANALYSIS.figures(lens.ANALYSIS.tables(recordings))[0]
    joined = lined(lens_figure.figure)
    assert joined and all(len(line.get_xdata()) == LAYERS + 1 for line in joined)  # embeddings + each block
    assert len(lens_figure.figure.axes[0].collections) >= 2  # each line has its band


def test_locality_skips_a_single_slot_and_points_two(tmp_path):
    (locality,) = modules("locality")

    single = rows(masks=(1,), placement="relevant-at:0") + rows(masks=(1,), placement="random")
    skipped = locality.ANALYSIS.figures(locality.ANALYSIS.tables(load([dream_store(tmp_path, "a.h5", single)])))
    assert [(f.name, f.figure) for f in skipped] == [("locality_r2_d4", None)] and "single x value" in skipped[0].caption
    two = single + rows(masks=(1,), placement="relevant-at:4")
    drawn = locality.ANALYSIS.figures(locality.ANALYSIS.tables(load([dream_store(tmp_path, "b.h5", two)])))
    assert len(drawn) == 1 and lined(drawn[0].figure) == []
    assert title(drawn[0]) == "dream-mini: locality, 2 relevant + 4 distractor examples, n = 8 per condition"
    assert any(container.has_yerr for ax in drawn[0].figure.axes for container in ax.containers)


def test_context_benefit_title_and_two_mask_counts_as_points(tmp_path):
    (context_benefit,) = modules("context_benefit")

    base = [r for r in rows(masks=(1,))]
    with_rows = rows(masks=(1, 3, 6))
    stores = [dream_store(tmp_path, "none.h5", base, n_relevant=0), dream_store(tmp_path, "two.h5", with_rows)]
    drawn = context_benefit.ANALYSIS.figures(context_benefit.ANALYSIS.tables(load(stores)))
    assert len(drawn) == 1
    assert title(drawn[0]) == ("dream-mini: context benefit against mask drop, 2 relevant + 4 distractor examples, "
                               "placement random, n = 4 per task")
    trend = drawn[0].figure.axes[1]
    assert lined(drawn[0].figure) == []  # masks 3 and 6: points with bars
    assert any(container.has_yerr for container in trend.containers)


def test_iterative_and_decode_trajectory_titles(tmp_path):
    (iterative,) = modules("iterative")

    decode_rows = []
    for prompt in range(3):
        decode_rows.append({"task": TASKS[0], "prompt": prompt, "masks": 1, "steps": 1, "unmask_step": 0,
                            "step_p_answer": [0.9] + [np.nan] * (STEPS - 1), "masks_left": [1] + [-1] * (STEPS - 1),
                            "decode_attention": np.zeros((STEPS, LAYERS, HEADS))})
        decode_rows.append({"task": TASKS[0], "prompt": prompt, "masks": 4, "correct": False, "decoded_correct": True,
                            "unmask_step": 3, "settle_step": 2, "step_p_answer": [0.1, 0.2, 0.5, 0.9],
                            "decode_attention": np.full((STEPS, LAYERS, HEADS), 0.1)})
    decode = {"sampler": "llada", "steps": None, "block": None, "cfg_scale": 0.0}
    store = write_store(tmp_path / "d.h5", decode_rows, model_id=DREAM, family="dream", tasks=[TASKS[0]],
                        groups=("examples", "tokens", "decode"), decode=decode)
    accuracy, trajectory = iterative.ANALYSIS.figures(iterative.ANALYSIS.tables(load([store])))
    assert title(accuracy) == ("dream-mini: iterative against one-step decoding, 2 relevant + 4 distractor examples, "
                               "placement random, n = 3 per condition")
    assert lined(accuracy.figure) == []  # masks 1 and 4: points
    assert title(trajectory).startswith("dream-mini: the answer slot across the steps of llada")
    assert "n = 3 per condition" in title(trajectory)


def test_patching_head_maps_have_one_integer_tick_per_head(tmp_path):
    from mdlm_interp.analyses.patching import heatmap

    figure, axes = new_figure()
    heatmap(axes[0, 0], np.zeros((2, 3)), ["0", "1"], ["0", "1", "2"], "t", "layer", "head")
    assert [t.get_text() for t in axes[0, 0].get_xticklabels()] == ["0", "1", "2"]
    assert list(axes[0, 0].get_yticks()) == [0, 1]


@pytest.mark.parametrize("positions", ["all", "readout"])
def test_ablation_title_names_model_n_and_where_attention_was_removed(positions):
    import pandas as pd

    from mdlm_interp.analyses.ablation import ablation_figure

    frame = pd.DataFrame([
        {"masks": 6, "setting": "none", "mode": "-", "heads": "", "n": 5, "accuracy": 0.8, "ci_low": 0.4,
         "ci_high": 0.96, "draw_min": np.nan, "draw_max": np.nan, "positions": positions},
        {"masks": 6, "setting": "chosen", "mode": "attention", "heads": "0.1", "n": 5, "accuracy": 0.2,
         "ci_low": 0.04, "ci_high": 0.6, "draw_min": np.nan, "draw_max": np.nan, "positions": positions}])
    text = title(ablation_figure(frame, "dream-mini", "top:1"))
    assert text.startswith("dream-mini: ablating heads 0.1 (top:1) against random heads, n = 5 per mask count")
    assert ("readout position only" in text) == (positions == "readout")
