"""Sweeps: a grid of recordings (the paper's by default) run store by store, resumably, then analysed.

A grid is data: a tuple of ``Part`` (a context setting with its mask counts, placements, filler and
recorders). ``run_sweep`` records every (model, part, placement, mask count) into its own store under
OUT/stores/MODEL/PART/, so a rerun after a kill skips the complete stores and resumes the partial one;
OUT/sweep.json keeps the sweep's settings, and a rerun with other settings is refused before any work.
A complete store already at a store's path counts only if its settings are the sweep's (else refused);
files under OUT/stores that are no store of the sweep are left out of it (``foreign_files``).

One sweep writes OUT at a time (``outputs.OutputLock`` on OUT). ``overwrite`` never deletes first: the
new sweep is recorded into ``.OUT.overwrite`` next to OUT (a rerun after a kill continues it there) and
its stores and sweep.json replace OUT's only once all are complete, so a kill keeps the old sweep whole.
"""

import json
import shutil
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

from mdlm_interp.errors import UsageError
from mdlm_interp.outputs import OutputLock, output_path, replace_dir, staged_file
from mdlm_interp.sharding import Shard

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


def sweep_json(folder: Path) -> dict | None:
    """Return the settings of the sweep in ``folder`` (its sweep.json), None if it has none; UsageError if
    it is unreadable."""
    manifest = folder / "sweep.json"
    if not manifest.exists():
        return None
    try:
        old = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{manifest} is not a sweep's settings ({str(error).splitlines()[0]})") from None
    if not isinstance(old, dict) or not isinstance(old.get("settings"), dict):
        raise UsageError(f"{manifest} is not a sweep's settings (no settings object)")
    return old["settings"]


def differing(settings: dict, old: dict) -> str | None:
    """Return the first key of ``settings`` whose value ``old`` does not repeat (None if all do)."""
    for key in settings:
        if json.loads(json.dumps(settings[key])) != old.get(key):
            return key
    return None


def check_sweep(out, settings: dict, overwrite: bool) -> Path:
    """Return the folder to record into: ``out`` (new, empty or holding this sweep), or with ``overwrite``
    of an existing sweep its staging folder ``.OUT.overwrite`` (kept if it holds this sweep, else emptied).
    UsageError, nothing touched, if ``out`` names no folder, is a file, or holds a sweep with other settings
    and ``overwrite`` is not set."""
    out = output_path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    old = sweep_json(out)
    if old is not None and not overwrite:
        key = differing(settings, old)
        if key is not None:
            raise UsageError(f"{out} holds a sweep with other {key} ({json.dumps(old.get(key))[:80]} "
                             f"there, {json.dumps(settings[key])[:80]} here); use another --out or --overwrite")
    target = out
    if overwrite and (old is not None or (out / "stores").exists()):
        target = out.with_name(f".{out.name}.overwrite")
        staged = sweep_json(target) if target.is_dir() else None
        if staged is None or differing(settings, staged) is not None:
            shutil.rmtree(target, ignore_errors=True)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create {target}: {error.strerror or error}") from None
    return target


def expected_settings(unit: Unit, n: int, seed: int, batch_size: int, dtype: str, fingerprint: str) -> dict:
    """Return the settings ``record`` writes into ``unit``'s store (masks left out for a causal model, which
    records none), as JSON reads them back."""
    from mdlm_interp.record import RecordConfig

    config = RecordConfig(masks=[unit.masks], filler=unit.part.filler, placements=[unit.placement], n=n,
                          n_relevant=unit.part.n_relevant, n_distractor=unit.part.n_distractor,
                          record=list(unit.part.record), seed=seed)
    expected = {**config.settings(), "model_id": unit.model, "weights_fingerprint": fingerprint,
                "batch_size": batch_size, "dtype": dtype}
    if unit.causal:
        expected.pop("masks")
    return json.loads(json.dumps(expected))


def foreign_files(out, paths) -> list[Path]:
    """Return the files under OUT/stores that are not among the sweep's store ``paths`` (left out of it)."""
    planned = {Path(p).resolve() for p in paths}
    stores = Path(out) / "stores"
    return sorted(p for p in stores.rglob("*") if p.is_file() and p.resolve() not in planned) if stores.is_dir() else []


def run_sweep(grid_name: str, models: list, *, n: int, out, seed: int = 0, batch_size: int = 8,
              device: str = "cpu", dtype: str = "float32", overwrite: bool = False, progress: bool = True,
              command_line: str = "", shard: Shard | None = None) -> list[Path]:
    """Record grid ``grid_name`` for every model into OUT/stores (resuming what a killed run left) and return
    the store paths. One progress bar counts the rows of the whole sweep.

    Bad input (unknown grid, model or device, n < 1, an OUT that names no folder or holds another sweep, a
    complete store there with other settings, another sweep writing OUT) raises ``UsageError`` before any
    model is loaded or sweep.json written. ``overwrite`` records beside OUT and replaces OUT's stores and
    sweep.json once every store is complete (see the module docstring). ``shard`` (``sharding.Shard``, under
    torchrun): the leader alone locks, checks and finishes OUT; each rank records its block of the stores
    left to record (``units_of``), each store whole, so the stores are those one process records.
    """
    from mdlm_interp.models.checkpoint import read_config, resolve_checkpoint, weights_fingerprint
    from mdlm_interp.models.families import family_for_config
    from mdlm_interp.models.loader import parse_device, parse_dtype
    from mdlm_interp.store import open_store

    shard = shard or Shard()
    if grid_name not in GRIDS:
        raise UsageError(f"unknown grid '{grid_name}'; choose from {', '.join(GRIDS)}")
    if n < 1 or batch_size < 1:
        raise UsageError("--n and --batch-size must be at least 1")
    if not models:
        raise UsageError("give at least one --model")
    parse_device(device)
    parse_dtype(dtype)
    out = output_path(out)
    causal = {m: family_for_config(read_config(resolve_checkpoint(m))).causal for m in models}
    settings = settings_of(grid_name, models, n, seed, batch_size)
    units = plan_units(models, GRIDS[grid_name], causal)

    def prepare(held: ExitStack) -> tuple[Path, dict]:
        """Lock OUT (until ``held`` closes), check it, find the stores already recorded, write sweep.json;
        return (the folder to record into, unit -> (rows, complete) of the stores found)."""
        try:
            out.parent.mkdir(parents=True, exist_ok=True)  # for the lock file next to OUT
        except OSError as error:
            raise UsageError(f"cannot create {out.parent}: {error.strerror or error}") from None
        held.enter_context(OutputLock(out))
        target = check_sweep(out, settings, overwrite)
        fingerprints = {m: weights_fingerprint(resolve_checkpoint(m)) for m in models}
        done = {}
        for unit in units:
            path = unit.path(target)
            if path.exists():
                with open_store(path) as store:
                    rows, complete, stored = store.n_rows, store.attrs["status"] == "complete", store.attrs["settings"]
                key = differing(expected_settings(unit, n, seed, batch_size, dtype, fingerprints[unit.model]), stored)
                if complete and key is not None:
                    raise UsageError(f"{path} is not a store of this sweep (its {key} differs); move it away or "
                                     "use another --out")
                done[unit] = (rows, complete)
        with staged_file(target / "sweep.json") as handle:
            handle.write(json.dumps({"command_line": command_line, "settings": settings}, indent=2) + "\n")
        return target, done

    def finish() -> None:
        if target != out:
            out.mkdir(parents=True, exist_ok=True)
            replace_dir(target / "stores", out / "stores")
            (target / "sweep.json").replace(out / "sweep.json")
            shutil.rmtree(target, ignore_errors=True)

    with ExitStack() as held:
        target, done = shard.step(lambda: prepare(held), leader_only=True)
        shard.step(lambda: record_units(units_of(shard, units, done, n), done, target, n=n, seed=seed,
                                        batch_size=batch_size, device=device, dtype=dtype,
                                        progress=progress and shard.leader, command_line=command_line))
        shard.step(finish, leader_only=True)
    return [u.path(out) for u in units]


def units_of(shard: Shard, units: list, done: dict, n: int) -> list[Unit]:
    """Return the stores that ``shard``'s rank records: its contiguous block of ``units`` not complete in
    ``done`` (unit -> (rows, complete)), the blocks balanced by the rows left to record (a store goes to
    the rank whose share of those rows holds its middle row). One rank of one records them all."""
    left = [(unit, unit.rows(n) - done.get(unit, (0, False))[0]) for unit in units
            if not done.get(unit, (0, False))[1]]
    total = sum(rows for _, rows in left)
    mine, before = [], 0
    for unit, rows in left:
        if min(int((before + rows / 2) * shard.world / total), shard.world - 1) == shard.rank:
            mine.append(unit)
        before += rows
    return mine


def record_units(units, done: dict, target: Path, *, n, seed, batch_size, device, dtype, progress,
                 command_line) -> None:
    """Record every unit not complete in ``done`` (unit -> (rows, complete)) into ``target``/stores,
    resuming partial stores, one model in memory at a time, under one progress bar of rows."""
    from mdlm_interp.models import load_model
    from mdlm_interp.record import record

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(u.rows(n) for u in units), initial=sum(done.get(u, (0, False))[0] for u in units),
                   unit="row", desc="sweep")
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
        path = unit.path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        record(loaded[unit.model], out=path, masks=[unit.masks], filler=unit.part.filler,
               placements=[unit.placement], n=n, n_relevant=unit.part.n_relevant,
               n_distractor=unit.part.n_distractor, record=list(unit.part.record), batch_size=batch_size, seed=seed,
               progress=False, resume=True, command_line=command_line)
        if bar is not None:
            bar.update(unit.rows(n) - rows)
    if bar is not None:
        bar.close()
