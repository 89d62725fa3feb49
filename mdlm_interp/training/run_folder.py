"""A training run's folder: its resumable state, its log, and the checks that start or resume a run.

Both trainers (``training.pretrain`` for the organisms, ``training.ma`` for MA-loss fine-tuning) keep
the same things in their output folder while they train:

- ``train_state/``: the trained parameters and their AdamW moments (safetensors) and the position
  (``state.json``: step, seconds, running terms and the run's configuration), written every
  ``save_every`` steps by ``save_state``, swapped in whole so that a kill leaves the previous one;
- a CSV log of one row per step (``open_log``), cut back to the saved step on resume;

and ``resume_position`` is the one check of a resume: the saved configuration must be the run's.
The caller holds ``mdlm_interp.outputs.OutputLock`` on the folder while it trains, so that two runs
never write one folder.
"""

import csv
import json
import shutil
from pathlib import Path

import torch

from mdlm_interp.errors import UsageError

STATE_DIR = "train_state"


def save_state(out: Path, params: dict, optimizer: torch.optim.Optimizer, position: dict) -> None:
    """Write the resumable state to ``out/train_state``: the trained parameters (``params``, name ->
    Parameter) and their AdamW moments as safetensors, ``position`` as JSON. Written to a temporary
    folder, then swapped in, so a kill leaves the previous state intact."""
    from safetensors.torch import save_file

    names = {id(p): n for n, p in params.items()}
    moments = {}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            moments[f"{names[id(param)]}::{key}"] = value.detach().contiguous()
    tmp = out / (STATE_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({n: p.detach().contiguous() for n, p in params.items()}, str(tmp / "model.safetensors"))
    save_file(moments, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps(position, indent=2) + "\n")
    final = out / STATE_DIR
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def load_state(out: Path, params: dict, optimizer: torch.optim.Optimizer) -> dict:
    """Restore ``params`` (name -> Parameter) and their AdamW moments from ``out/train_state``;
    return its position JSON."""
    from safetensors.torch import load_file

    weights = load_file(str(out / STATE_DIR / "model.safetensors"))
    moments = load_file(str(out / STATE_DIR / "optimizer.safetensors"))
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name])
    for name, param in params.items():
        state = {key.split("::")[1]: value for key, value in moments.items() if key.split("::")[0] == name}
        if state:
            optimizer.state[param] = state
    return json.loads((out / STATE_DIR / "state.json").read_text())


def saved_position(out: Path) -> dict | None:
    """Return the position JSON of ``out/train_state``, or None when there is no saved state."""
    path = out / STATE_DIR / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def resume_position(out: Path, config_json: dict, *, missing_ok: bool = False) -> dict | None:
    """Return the saved position of the run in ``out`` (its ``state.json``), which must have been made with
    ``config_json`` (compared as JSON); ``UsageError`` otherwise. Without a saved state: None if
    ``missing_ok`` (a run killed before its first save starts again from step 0), else ``UsageError``."""
    saved = saved_position(out)
    if saved is None:
        if missing_ok:
            return None
        raise UsageError(f"{out}: nothing to resume (no {STATE_DIR}/state.json)")
    if saved.get("config") != json.loads(json.dumps(config_json)):
        raise UsageError(f"{out}: the saved training state was made with a different configuration")
    return saved


def remove_state(out: Path) -> None:
    """Remove the resumable state of the finished run in ``out``."""
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)


def open_log(path: Path, done: int, columns: tuple):
    """Open the CSV training log ``path`` for writing after step ``done``; return (file, csv writer). A new
    log gets the header ``columns``; an existing one is cut back to its first ``done`` steps (rows a
    killed run wrote after its last save)."""
    kept = []
    if done and path.exists():
        with open(path, newline="") as handle:
            kept = list(csv.reader(handle))[1:done + 1]
    handle = open(path, "w", newline="")
    writer = csv.writer(handle)
    writer.writerows([columns, *kept])
    return handle, writer
