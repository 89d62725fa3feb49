"""``sweep``: one store per (model, part, placement, masks), causal models trimmed, resumable, refused when
the settings change, and a report over all models at the end."""

import pytest

from cli_run import run_cli
from mdlm_interp.errors import UsageError
from mdlm_interp.store import open_store
from mdlm_interp.sweep import GRIDS, N_TASKS, Part, plan_units, run_sweep

TINY = (
    Part("ladder", "masks", 2, 2, (1, 3), filler=" .", record=("lens",)),
    Part("moved", "locality", 2, 2, (1,), placements=("relevant-at:0", "relevant-at:2,query-at:1")),
)


@pytest.fixture
def tiny_grid(monkeypatch):
    monkeypatch.setitem(GRIDS, "tiny", TINY)
    return "tiny"


def test_plan_leaves_masks_and_moved_queries_out_for_causal_models():
    units = plan_units(["d", "c"], TINY, {"d": False, "c": True})
    diffusion = [(u.part.name, u.placement, u.masks) for u in units if u.model == "d"]
    causal = [(u.part.name, u.placement, u.masks) for u in units if u.model == "c"]
    assert diffusion == [("ladder", "random", 1), ("ladder", "random", 3), ("moved", "relevant-at:0", 1),
                         ("moved", "relevant-at:2,query-at:1", 1)]
    assert causal == [("ladder", "random", 1), ("moved", "relevant-at:0", 1)]
    assert [u.rows(5) for u in units if u.model == "d"] == [5 * N_TASKS, 2 * 5 * N_TASKS, 5 * N_TASKS, 5 * N_TASKS]


def test_sweep_records_every_store_and_resumes_after_a_kill(tiny_grid, tiny_checkpoint, tmp_path, monkeypatch):
    import mdlm_interp.record

    models = [str(tiny_checkpoint("llada")), str(tiny_checkpoint("llama"))]
    real_record, calls = mdlm_interp.record.record, []

    def killed_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(kwargs["out"])
        return real_record(*args, **kwargs)

    monkeypatch.setattr(mdlm_interp.record, "record", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(tiny_grid, models, n=1, out=tmp_path, progress=False)
    first = {path: path.stat().st_mtime_ns for path in calls}
    monkeypatch.setattr(mdlm_interp.record, "record", real_record)
    paths = run_sweep(tiny_grid, models, n=1, out=tmp_path, progress=False)
    assert len(paths) == 6 and all(p.exists() for p in paths)
    assert {p: p.stat().st_mtime_ns for p in first} == first  # complete stores were not recorded again
    with open_store(paths[1]) as store:  # llada, ladder, 3 masks: masks and filler control
        assert store.attrs["status"] == "complete" and store.n_rows == 2 * N_TASKS
        assert set(store.examples["filler"]) == {False, True} and store.groups[-1] == "lens"
    with open_store(paths[-1]) as store:  # llama, moved block: no masks
        assert set(store.examples["masks"]) == {0} and set(store.examples["placement"]) == {"relevant-at:0"}
    with pytest.raises(UsageError, match="holds a sweep with other n"):
        run_sweep(tiny_grid, models, n=2, out=tmp_path, progress=False)


def test_sweep_refuses_an_unknown_model_before_any_work(tiny_grid, tmp_path):
    with pytest.raises(UsageError, match="no-such-model"):
        run_sweep(tiny_grid, ["organism-no-such-model"], n=1, out=tmp_path / "sweep", progress=False)
    assert not (tmp_path / "sweep").exists()


def test_sweep_command_writes_one_report_comparing_the_models(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(GRIDS, "paper", TINY)
    llada, llama = tiny_checkpoint("llada"), tiny_checkpoint("llama")
    result = run_cli("sweep", "paper", "--model", llada, "--model", llama, "--n", 1, "--out", tmp_path / "s",
                     "--no-progress")
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "s" / "report.md").read_text()
    assert f"report: {tmp_path / 's' / 'report.md'}" in result.stdout
    assert llada.name in report and llama.name in report
    assert (tmp_path / "s" / "figures" / "inverse_scaling_r2_d2_random.png").exists()
    # one slot per locality panel in this grid: the table, but no figure around a single x value
    assert (tmp_path / "s" / "tables" / "locality.csv").exists()
    assert not (tmp_path / "s" / "figures" / "locality_r2_d2.png").exists()
    assert "Figure locality_r2_d2 is not drawn" in (tmp_path / "s" / "report.md").read_text()  # a note says why
