"""Figures and reports: intervals that never make negative error bars, a failing figure as a note, no empty
folders after a crash, Holm-adjusted p-values, legends and titles that say what is drawn (issue 19 items 3, 6, 8)."""

import numpy as np
import pytest

from synthetic_stores import write_store

from mdlm_interp.analyses import load
from mdlm_interp.analyses.plotting import error_bars, line_with_band, new_figure
from mdlm_interp.analyses.report import write_report
from mdlm_interp.analyses.stats import holm, wilson_interval


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_wilson_bounds_hold_the_estimate_and_bars_are_never_negative(share):
    n = np.arange(1, 401)
    successes = share * n
    low, high = wilson_interval(successes, n)
    p = successes / n
    assert (low <= p).all() and (p <= high).all()
    bars = error_bars(p, low, high)
    assert bars.shape == (2, 400) and (bars >= 0).all()
    assert (bars[0 if share == 0 else 1] == 0).all()  # nothing above 100% or below 0%
    figure, axes = new_figure()
    axes[0, 0].errorbar(n, p, yerr=bars)  # matplotlib refuses negative bars: this must not raise


def test_error_bars_clip_bounds_that_rounding_put_beyond_the_estimate():
    bars = error_bars([1.0, 0.5, np.nan], [1.0 + 1e-16, 0.4, np.nan], [1.0 - 1e-16, 0.7, np.nan])
    np.testing.assert_allclose(bars, [[0, 0.1, 0], [0, 0.2, 0]])


def test_holm_adjusts_known_p_values():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 * 0.005, 3 * 0.01, 2 * 0.03, max(0.06, 1 * 0.04)
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])
    adjusted = holm([0.2, np.nan, 0.01])
    assert np.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02) and adjusted[0] == pytest.approx(0.2)


def rows(correct_at_6=True, attention=None):
    out = []
    for task in ("adjective+largest", "verb+smallest"):
        for prompt in range(4):
            for masks in (1, 3, 6):
                row = {"task": task, "prompt": prompt, "masks": masks, "correct": masks == 1 or correct_at_6,
                       "p_answer": 0.9 - 0.1 * masks + 0.01 * prompt}
                row["from_answer"] = np.full((2, 3), 0.05 * masks + 0.01 * prompt) if attention is None else attention
                out.append(row)
    return out


def test_head_ranking_reports_holm_adjusted_p_values(tmp_path):
    from mdlm_interp.analyses.heads import head_ranking, paragraph

    recordings = load([write_store(tmp_path / "s.h5", rows())])
    tables = head_ranking(recordings, resamples=50)
    ranking = tables["head_ranking"]
    for _, group in ranking.groupby(["model", "placement"]):
        np.testing.assert_allclose(group["p_adjusted"], holm(group["p_permutation"].to_numpy()))
    assert (ranking["p_adjusted"] >= ranking["p_permutation"]).all()
    assert f"Holm-adjusted over the {len(ranking)} heads p = {ranking['p_adjusted'].iloc[0]:.3f}" in paragraph(tables)


def test_figures_at_100_percent_are_drawn(tmp_path):
    """Every prompt correct (Wilson's upper bound is 1, a hair below the estimate before the fix): analyze
    draws every figure without a note."""
    out = tmp_path / "report"
    write_report([write_store(tmp_path / "s.h5", rows())], out)
    report = (out / "report.md").read_text()
    assert "could not be drawn" not in report
    assert any(p.name.startswith("inverse_scaling_") for p in (out / "figures").iterdir())


def test_a_figure_that_fails_is_a_note_and_the_rest_is_written(tmp_path, monkeypatch):
    import dataclasses

    from mdlm_interp.analyses import registry, report

    def broken(tables):
        raise ValueError("'yerr' must not contain negative values")

    entries = [dataclasses.replace(a, figures=broken) if a.name == "inverse_scaling" else a
               for a in registry.analyses()]
    monkeypatch.setattr(report, "registered", lambda: entries)
    out = tmp_path / "report"
    write_report([write_store(tmp_path / "s.h5", rows())], out)
    report = (out / "report.md").read_text()
    assert "could not be drawn (ValueError: 'yerr' must not contain negative values)" in report
    assert (out / "tables" / "inverse_scaling.csv").exists() and (out / "provenance.json").exists()
    assert "![inverse_scaling" not in report


def test_a_crashed_report_leaves_no_empty_folders(tmp_path, monkeypatch):
    from mdlm_interp.analyses import report

    def crash(*args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(report, "render", crash)
    out = tmp_path / "a" / "report"
    with pytest.raises(RuntimeError):
        write_report([write_store(tmp_path / "s.h5", rows())], out)
    assert not (tmp_path / "a").exists()


def test_two_mask_counts_are_points_not_a_trend():
    figure, axes = new_figure()
    ax = axes[0, 0]
    line_with_band(ax, [1, 50], [0.9, 0.2], [0.8, 0.1], [1.0, 0.3], "red", label="model, masks")
    assert all(line.get_linestyle() in ("None", "") for line in ax.get_lines())  # no line joins the two
    assert not ax.collections or all(type(c).__name__ != "FillBetweenPolyCollection" for c in ax.collections)
    figure, axes = new_figure()
    line_with_band(axes[0, 0], [1, 3, 6], [0.9, 0.5, 0.2], [0.8, 0.4, 0.1], [1.0, 0.6, 0.3], "red")
    assert any(line.get_linestyle() == "-" for line in axes[0, 0].get_lines())


def test_nan_values_in_a_store_do_not_crash_analyze(tmp_path):
    from cli_run import run_cli

    broken = rows(attention=np.full((2, 3), np.nan))
    for row in broken[::3]:
        row["p_answer"] = np.nan
    result = run_cli("analyze", write_store(tmp_path / "s.h5", broken), "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "report.md").exists()


def test_inverse_scaling_figures_at_two_mask_counts_are_points_with_a_titled_model_and_n(tmp_path):
    from mdlm_interp.analyses.inverse_scaling import figures, inverse_scaling

    two = [r for r in rows() if r["masks"] in (1, 6)]
    tables = {"inverse_scaling": inverse_scaling(load([write_store(tmp_path / "s.h5", two)]))}
    drawn = figures(tables)
    assert [f.name for f in drawn] == ["inverse_scaling_r2_d4_random", "inverse_scaling_tasks_r2_d4_random"]
    title = drawn[0].figure._suptitle.get_text()
    assert "model" in title and "n = 8 per condition" in title
    assert all(line.get_linestyle() in ("None", "") for ax in drawn[0].figure.axes for line in ax.get_lines())
    labels = drawn[0].figure.axes[0].get_legend_handles_labels()[1]
    assert labels == ["model, masks"]  # no filler control recorded: no legend entry for one
    one = [r for r in rows() if r["masks"] == 1]
    assert figures({"inverse_scaling": inverse_scaling(load([write_store(tmp_path / "one.h5", one)]))}) == []
