"""Ablation effects: every accuracy, the pooled control's included, carries a Wilson interval."""

import numpy as np
import pytest

from mdlm_interp.analyses.ablation import ablation_effects
from mdlm_interp.analyses.stats import wilson_interval
from mdlm_interp.circuits.schemas import ABLATION
from mdlm_interp.store import Provenance
from mdlm_interp.store.results import open_results, write_results


def write(path, base, chosen, control):
    """An ablation store at one mask count with one mode: ``base`` and ``chosen`` correct [rows], ``control``
    correct [rows, draws]."""
    rows, draws = np.shape(control)
    columns = {}
    for field in ABLATION.data:
        shape = (rows,) + field.row_shape({"modes": 1, "draws": draws})
        columns[field.path] = ["adjective+largest"] * rows if field.dtype == "str" else np.zeros(shape, field.numpy_dtype)
    columns["examples/masks"] = np.full(rows, 50)
    columns["examples/correct"] = np.asarray(base, dtype=bool)
    columns["ablated/correct"] = np.asarray(chosen, dtype=bool)[:, None]
    columns["control/correct"] = np.asarray(control, dtype=bool)[:, :, None]
    provenance = Provenance(command_line="synthetic", model_id="m", family="llada", dtype="float32",
                            weights_fingerprint="sha256:" + "ab" * 32, task_config={}, seed=0)
    attrs = {"heads": ["0.1"], "head_selection": "0.1", "ranking": None, "modes": ["zero"],
             "control_heads": [["1.0"]] * draws}
    return write_results(path, ABLATION, columns, dims={"modes": 1, "draws": draws}, provenance=provenance,
                         settings={}, attrs=attrs)


@pytest.mark.parametrize("control_correct", [0, 3, 12])
def test_the_controls_interval_is_wilson_over_prompts_times_draws(tmp_path, control_correct):
    rows, draws = 6, 2
    control = np.zeros(rows * draws, dtype=bool)
    control[:control_correct] = True
    path = write(tmp_path / "a.h5", [True] * 3 + [False] * 3, [False] * rows, control.reshape(rows, draws))
    with open_results(path, "ablation") as store:
        frame = ablation_effects(store, resamples=50).set_index("setting")
    low, high = (float(v) for v in wilson_interval(control_correct, rows * draws))
    assert frame.loc["control", "accuracy"] == pytest.approx(control_correct / 12)
    assert (frame.loc["control", "ci_low"], frame.loc["control", "ci_high"]) == pytest.approx((low, high))
    assert frame.loc["control", "ci_high"] > frame.loc["control", "accuracy"] or control_correct == 12
    assert frame.loc["control", "ci_low"] < frame.loc["control", "accuracy"] or control_correct == 0
    assert (frame.loc["chosen", "ci_low"], frame.loc["chosen", "ci_high"]) == pytest.approx(tuple(float(v) for v in wilson_interval(0, rows)))
