"""Sweeps: a grid of recordings (the paper's by default) run store by store, resumably, then analysed.

A grid is data: a tuple of ``Part`` (a context setting with its mask counts, placements, filler and
recorders). ``run_sweep`` records every (model, part, placement, mask count) into its own store under
OUT/stores/MODEL/PART/, so a rerun after a kill skips the complete stores and resumes the partial one;
OUT/sweep.json keeps the sweep's settings, and a rerun with other settings is refused before any work.
"""

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from mdlm_interp.errors import UsageError

ALL_RECORDERS = ("attention", "gradients", "lens")
N_TASKS = 16


@dataclass(frozen=True)
class Part:
    """One context setting of a grid: n_relevant + n_distractor examples, recorded at every mask count and
    placement (with the filler control at each mask count above 1 when ``filler`` is set)."""

    name: str
    purpose: str
    n_relevant: int
    n_distractor: int
    masks: tuple
    placements: tuple = ("random",)
    filler: str | None = None
    record: tuple = ()


LOCALITY_BLOCK = 20  # the relevant block's slot while the query moves
PAPER = (
    Part("ladder", "inverse scaling, filler control, attribution, attention, logit lens", 10, 40,
         (1, 2, 5, 10, 15, 20, 25, 30, 35, 40, 50), filler=" .", record=ALL_RECORDERS),
    Part("locality", "locality: the relevant block at slots 0..40 (query last), then the query moved around a "
         "fixed block", 10, 40, (1, 30), placements=tuple(f"relevant-at:{k}" for k in (0, 10, 20, 30, 40))
         + tuple(f"relevant-at:{LOCALITY_BLOCK},query-at:{k}" for k in (0, 10, 20, 30, 40))),
    Part("no-relevant", "context benefit: the same distractors without relevant examples", 0, 40, (1,)),
    Part("two-relevant", "off the ceiling: 2 relevant examples among 40 distractors", 2, 40,
         (1, 5, 10, 20, 25, 30, 35, 40, 50)),
    Part("no-distractor", "context length: the 10 relevant examples alone", 10, 0, (1, 10, 20, 30, 40, 50)),
)
GRIDS = {"paper": PAPER}


@dataclass(frozen=True)
class Unit:
    """One store of a sweep: a model, a part, one placement and one mask count."""

    model: str
    part: Part
    placement: str
    masks: int
    causal: bool

    @property
    def conditions(self) -> int:
        """Conditions recorded into the store: the masks, plus the filler control above 1 mask."""
        return 2 if (self.part.filler and self.masks > 1 and not self.causal) else 1

    def rows(self, n: int) -> int:
        """Rows the store will hold for ``n`` prompts per task."""
        return self.conditions * n * N_TASKS

    def path(self, out: Path) -> Path:
        """Where the store goes: OUT/stores/MODEL/PART/PLACEMENT_mMASKS.h5."""
        slug = self.placement.replace(":", "").replace(",", "_")
        return out / "stores" / Path(self.model).name / self.part.name / f"{slug}_m{self.masks}.h5"


def plan_units(models: list, grid, causal: dict) -> list[Unit]:
    """Return the stores of a sweep in recording order. Causal models (``causal[model]`` true) take 1 mask
    (recorded as none) and only placements with the query last."""
    units = []
    for model in models:
        for part in grid:
            for placement in part.placements:
                if causal[model] and "query-at:" in placement:
                    continue
                for masks in ((1,) if causal[model] else part.masks):
                    units.append(Unit(model, part, placement, masks, causal[model]))
    return units


def settings_of(grid_name: str, models: list, n: int, seed: int, batch_size: int) -> dict:
    """Return the JSON settings that a rerun must repeat to continue a sweep."""
    return {"grid": grid_name, "parts": [asdict(p) for p in GRIDS[grid_name]], "models": list(models), "n": n,
            "seed": seed, "batch_size": batch_size}


def check_sweep(out, settings: dict, overwrite: bool) -> Path:
    """Make ``out`` ready for a sweep; UsageError (nothing touched) if it holds a sweep with other settings
    and ``overwrite`` is not set, or if it cannot be created."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    manifest = out / "sweep.json"
    if manifest.exists() and not overwrite:
        old = json.loads(manifest.read_text())
        old_settings = old.get("settings", {})
        for key in settings:
            if json.loads(json.dumps(settings[key])) != old_settings.get(key):
                raise UsageError(f"{out} holds a sweep with other {key} ({json.dumps(old_settings.get(key))[:80]} "
                                 f"there, {json.dumps(settings[key])[:80]} here); use another --out or --overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create {out}: {error.strerror or error}") from None
    return out


def run_sweep(grid_name: str, models: list, *, n: int, out, seed: int = 0, batch_size: int = 8,
              device: str = "cpu", dtype: str = "float32", overwrite: bool = False, progress: bool = True,
              command_line: str = "") -> list[Path]:
    """Record grid ``grid_name`` for every model into OUT/stores (resuming what a killed run left) and return
    the store paths. One progress bar counts the rows of the whole sweep.

    Bad input (unknown grid or model, n < 1, an OUT holding another sweep) raises ``UsageError`` before
    any model is loaded. ``overwrite`` deletes OUT/stores and OUT/sweep.json first.
    """
    from mdlm_interp.models import load_model
    from mdlm_interp.models.checkpoint import read_config, resolve_checkpoint
    from mdlm_interp.models.families import family_for_config
    from mdlm_interp.record import record
    from mdlm_interp.store import open_store

    if grid_name not in GRIDS:
        raise UsageError(f"unknown grid '{grid_name}'; choose from {', '.join(GRIDS)}")
    if n < 1 or batch_size < 1:
        raise UsageError("--n and --batch-size must be at least 1")
    if not models:
        raise UsageError("give at least one --model")
    causal = {m: family_for_config(read_config(resolve_checkpoint(m))).causal for m in models}
    settings = settings_of(grid_name, models, n, seed, batch_size)
    out = check_sweep(out, settings, overwrite)
    if overwrite:
        shutil.rmtree(out / "stores", ignore_errors=True)
    (out / "sweep.json").write_text(json.dumps({"command_line": command_line, "settings": settings}, indent=2) + "\n")
    units = plan_units(models, GRIDS[grid_name], causal)
    done = {}
    for unit in units:
        path = unit.path(out)
        if path.exists():
            with open_store(path) as store:
                done[unit] = (store.n_rows, store.attrs["status"] == "complete")
    total = sum(u.rows(n) for u in units)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=sum(rows for rows, _ in done.values()), unit="row", desc="sweep")
    loaded = {}
    for unit in units:
        rows, complete = done.get(unit, (0, False))
        if complete:
            continue
        if unit.model not in loaded:
            loaded.clear()  # one model in memory at a time
            loaded[unit.model] = load_model(unit.model, device=device, dtype=dtype)
        if bar is not None:
            bar.set_postfix_str(f"{Path(unit.model).name} {unit.part.name} {unit.placement} masks={unit.masks}")
        path = unit.path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        record(loaded[unit.model], out=path, masks=[unit.masks], filler=unit.part.filler,
               placements=[unit.placement], n=n, n_relevant=unit.part.n_relevant,
               n_distractor=unit.part.n_distractor, record=list(unit.part.record), batch_size=batch_size, seed=seed,
               progress=False, resume=True, command_line=command_line)
        if bar is not None:
            bar.update(unit.rows(n) - rows)
    if bar is not None:
        bar.close()
    return [u.path(out) for u in units]
