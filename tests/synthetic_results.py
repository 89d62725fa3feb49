"""Synthetic patching and ablation result stores with known numbers (for compare, summary and damage tests)."""

import numpy as np

from mdlm_interp.circuits.schemas import ABLATION, PATCHING
from mdlm_interp.store import Provenance
from mdlm_interp.store.results import write_results

LAYERS, HEADS = 1, 2
GROUPS, HEAD_GROUPS = ["all", "answer"], ["answer", "all"]
TASKS = ["adjective+largest", "verb+smallest"]


def settings(adapter: str | None, **changes) -> dict:
    out = {"n": 2, "seed": 0, "n_relevant": 2, "n_distractor": 3, "placements": ["random"], "wrong_token": None,
           "clean": {"masks": 1, "filler": False, "placement": "random"},
           "corrupt": {"masks": 6, "filler": False, "placement": "random"}, **changes}
    if adapter:
        out["adapter"] = {"path": f"/adapters/{adapter}", "fingerprint": "sha256:" + "cd" * 32}
    return out


def provenance(adapter: str | None = None) -> Provenance:
    identity = settings(adapter).get("adapter")
    return Provenance(command_line="synthetic", model_id="/models/organism", family="llada", dtype="float32",
                      weights_fingerprint="sha256:" + "ab" * 32, task_config={}, seed=0,
                      adapter=adapter or "", adapter_fingerprint=identity["fingerprint"] if identity else "")


def patching_store(path, pairs: dict, adapter=None, **changes):
    """Write a patching store of ``pairs`` (examples: (task index, prompt) per pair; clean, corrupt: the runs'
    logit differences; patched: every clean_into_corrupt cell of pair i holds patched[i], every
    corrupt_into_clean cell patched[i] - 1); ``changes`` replace settings."""
    examples, clean, corrupt, patched = (pairs[k] for k in ("examples", "clean", "corrupt", "patched"))
    rows = len(examples)
    dims = {"directions": 2, "layers": LAYERS, "heads": HEADS, "groups": len(GROUPS), "head_groups": 2}
    columns = {}
    for field in PATCHING.data:
        shape = (rows,) + field.row_shape(dims)
        columns[field.path] = np.zeros(shape, dtype=field.numpy_dtype) if field.dtype != "str" else ["t"] * rows
    columns["pairs/example"] = np.array([t * 2 + p for t, p in examples])
    columns["pairs/task"] = [TASKS[t] for t, _ in examples]
    columns["pairs/clean_logit_diff"] = np.asarray(clean, dtype=np.float32)
    columns["pairs/corrupt_logit_diff"] = np.asarray(corrupt, dtype=np.float32)
    for site in ("resid_pre", "attn_out", "mlp_out", "z"):
        grid = columns[f"patching/{site}_logit_diff"]
        value = np.asarray(patched, dtype=np.float32).reshape(-1, *[1] * (grid.ndim - 1))
        grid[:, 0] = value[:, 0]
        grid[:, 1] = value[:, 0] - 1
        columns[f"attribution/{site}_logit_diff"] = grid.copy()
    attrs = {"directions": ["clean_into_corrupt", "corrupt_into_clean"], "position_groups": GROUPS,
             "head_groups": HEAD_GROUPS}
    return write_results(path, PATCHING, columns, dims=dims, provenance=provenance(adapter),
                         settings=settings(adapter, **changes), attrs=attrs)


def ablation_store(path, correct, chosen, control, adapter=None):
    """Write an ablation store at 50 masks with one mode ("zero"): ``correct`` unablated, ``chosen`` with head 0.1
    ablated, ``control`` [rows, draws] with random heads; examples are prompts 0, 1 of both tasks."""
    rows = len(correct)
    columns = {}
    for field in ABLATION.data:
        shape = (rows,) + field.row_shape({"modes": 1, "draws": 2})
        columns[field.path] = np.zeros(shape, dtype=field.numpy_dtype) if field.dtype != "str" else ["t"] * rows
    columns["examples/example"] = np.arange(rows)
    columns["examples/task"] = [TASKS[i // 2] for i in range(rows)]
    columns["examples/masks"] = np.full(rows, 50)
    columns["examples/correct"] = np.asarray(correct, dtype=bool)
    columns["ablated/correct"] = np.asarray(chosen, dtype=bool)[:, None]
    columns["control/correct"] = np.asarray(control, dtype=bool)[:, :, None]
    attrs = {"heads": ["0.1"], "head_selection": "0.1", "ranking": None, "modes": ["zero"],
             "control_heads": [["0.0"], ["1.1"]]}
    return write_results(path, ABLATION, columns, dims={"modes": 1, "draws": 2}, provenance=provenance(adapter),
                         settings=settings(adapter), attrs=attrs)


# the reference's pairs in task order; the other model's in another order, with one prompt the reference lacks
BASE = {"examples": [(0, 0), (0, 1), (1, 0), (1, 1)], "clean": [4, 6, 5, 5], "corrupt": [0, 2, -1, -1],
        "patched": [1, 3, 2, 0]}
AFTER = {"examples": [(1, 1), (0, 0), (1, 0), (0, 1), (1, 2)], "clean": [6, 5, 7, 6, 9], "corrupt": [5, 4, 4, 3, 9],
         "patched": [6, 4, 7, 4, 0]}
