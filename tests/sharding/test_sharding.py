"""torchrun for every heavy command: patch, ablate and sweep run by 2 processes (gloo) write the stores that
one process writes, a failure in one process ends both with one line, and the batches it committed
resume with any number of processes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cli_run import run_cli
from mdlm_interp.sharding import Shard
from mdlm_interp.store.compare import file_difference
from mdlm_interp.sweep import GRIDS, Part, plan_units, units_of

TASKS = "adjective+largest,verb+smallest"
SMALL = ["--task", TASKS, "--n-prompts", "3", "--n-relevant", "2", "--n-distractor", "3", "--batch-size", "2",
         "--no-progress"]  # 6 prompts per condition in 3 batches: blocks of 1 and 2 batches
TINY_GRID = (Part("ladder", "masks", 2, 2, (1, 3), filler=" .", record=("lens",)),
             Part("moved", "locality", 2, 2, (1,), placements=("relevant-at:0", "relevant-at:2,query-at:1")))

# One rank of a 2-process run that the test starts (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT: what torchrun
# sets; without torchrun's agent nothing stops a rank that waits for a failed one): joins the process group
# once and runs each [command line, failing rank] of argv[1] (JSON) in turn, with a tiny sweep grid, the
# failing rank's patched batches raising; prints the exit codes as JSON.
DRIVER = """
import json, os, sys
import torch.distributed as dist
import mdlm_interp.circuits.patching as patching
from mdlm_interp.cli import main
from mdlm_interp.errors import UsageError
from mdlm_interp.sweep import GRIDS, Part
GRIDS["paper"] = {grid}
real = patching.patch_batch
def fail(*args, **kwargs):
    raise UsageError("injected failure in rank " + os.environ["RANK"])
dist.init_process_group("gloo")
codes = []
for argv, failing in json.loads(sys.argv[1]):
    patching.patch_batch = fail if str(failing) == os.environ["RANK"] else real
    codes.append(main(argv))
print(json.dumps(codes))
dist.destroy_process_group()
"""


def free_port() -> int:
    """Return a TCP port that is free on this machine now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(**extra) -> dict:
    """Return this process's environment with the repository importable (and ``extra``)."""
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", **extra}


def run_ranks(folder: Path, runs: list, world: int = 2, timeout: float = 300) -> list[tuple[int, str, str]]:
    """Run the driver as ``world`` ranks on ``runs`` ([command line, failing rank or None], ...); return each
    rank's (exit code, stdout, stderr). On a timeout every process is killed before the test fails."""
    import signal

    driver, port = write_driver(folder), str(free_port())
    processes = [subprocess.Popen([sys.executable, str(driver), json.dumps(runs)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True,
                                  env=environment(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                                                  MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
                 for rank in range(world)]
    try:
        outputs = [process.communicate(timeout=timeout) for process in processes]
    finally:
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return [(process.returncode, *output) for process, output in zip(processes, outputs)]


def write_driver(folder: Path) -> Path:
    driver = folder / "driver.py"
    driver.write_text(DRIVER.format(grid=repr(TINY_GRID)))
    return driver


def assert_same_file(single, sharded):
    assert file_difference(single, sharded) is None


def commands(model: str, folder: Path) -> dict:
    """Return name -> command line of each heavy command writing into ``folder``."""
    return {
        "patch": ["patch", "--model", model, *SMALL, "--clean-masks", "1", "--corrupt-masks", "4",
                  "--out", str(folder / "patch.h5")],
        "ablate": ["ablate", "--model", model, *SMALL, "--masks", "1,4", "--heads", "top:2", "--modes", "zero,mean",
                   "--control-draws", "2", "--out", str(folder / "ablate.h5")],
        "sweep": ["sweep", "paper", "--model", model, "--n-prompts", "1", "--no-analyze", "--no-progress",
                  "--out", str(folder / "sweep")],
    }


@pytest.fixture(scope="module")
def runs(tiny_checkpoint, tmp_path_factory, process_group_lock):
    """Each heavy command run by one process (this one) and by 2 processes (one start for all three, then a
    patch whose rank 1 fails); return (one-process folder, 2-process folder, each rank's exit codes, stdout,
    stderr)."""
    model = str(tiny_checkpoint("llada"))
    single, sharded = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("sharded")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(GRIDS, "paper", TINY_GRID)
        for argv in commands(model, single).values():
            result = run_cli(*argv)
            assert result.returncode == 0, result.stderr
    (sharded / "failing").mkdir()
    with process_group_lock():
        ranks = run_ranks(sharded, [[argv, None] for argv in commands(model, sharded).values()]
                          + [[commands(model, sharded / "failing")["patch"], 1]])
    for code, stdout, stderr in ranks:
        assert code == 0 and stdout, stderr[-3000:]
    return single, sharded, [(json.loads(stdout.splitlines()[-1]), stdout, stderr) for _, stdout, stderr in ranks]


def test_sharded_patch_writes_the_store_of_one_process(runs):
    single, sharded, ranks = runs
    assert [codes[:3] for codes, _, _ in ranks] == [[0, 0, 0]] * 2
    assert_same_file(single / "patch.h5", sharded / "patch.h5")
    assert [stdout.count("wrote 6 pairs to") for _, stdout, _ in ranks] == [1, 0]  # rank 0 alone reports
    assert sorted(p.name for p in sharded.iterdir()) == ["ablate.h5", "driver.py", "failing", "patch.h5", "sweep"]


def test_sharded_ablation_takes_every_ranks_baselines_into_its_means_and_ranking(runs):
    single, sharded, _ = runs
    assert_same_file(single / "ablate.h5", sharded / "ablate.h5")
    with h5py.File(sharded / "ablate.h5") as file:  # the mean mode changed something: the means mattered
        assert not np.array_equal(file["ablated/p_answer"][:, 1], file["examples/p_answer"][:])


def test_sharded_sweep_records_the_stores_of_one_process(runs):
    single, sharded, _ = runs
    stores = sorted(p.relative_to(single / "sweep") for p in (single / "sweep").rglob("*.h5"))
    assert len(stores) == 4
    assert stores == sorted(p.relative_to(sharded / "sweep") for p in (sharded / "sweep").rglob("*.h5"))
    for store in stores:
        assert_same_file(single / "sweep" / store, sharded / "sweep" / store)
    settings = [json.loads((folder / "sweep" / "sweep.json").read_text())["settings"] for folder in (single, sharded)]
    assert settings[0] == settings[1]


def test_a_failing_rank_ends_both_with_its_one_line_and_the_rest_resumes_alone(runs, tiny_checkpoint):
    """Rank 1 fails in its first batch; rank 0 finishes and commits its own block, then stops quietly (no
    hang: nothing else would stop it); one process resumes into the store of one process."""
    single, sharded, ranks = runs
    assert [codes[3] for codes, _, _ in ranks] == [2, 2]
    errors = [line for _, _, stderr in ranks for line in stderr.splitlines() if line.strip()]
    assert errors == ["mdlm-interp: error: injected failure in rank 1"], errors
    failing = sharded / "failing"
    assert not (failing / "patch.h5").exists()
    assert sorted(p.name for p in (failing / ".patch.h5.batches").glob("*.npz")) == ["00000.npz"]  # rank 0's
    resumed = run_cli(*commands(str(tiny_checkpoint("llada")), failing)["patch"], "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_file(single / "patch.h5", failing / "patch.h5")


@pytest.mark.parametrize("n,world", [(7, 2), (3, 4), (10, 3)])
def test_blocks_cover_every_index_once_in_rank_order(n, world):
    blocks = [Shard(rank, world).block(n) for rank in range(world)]
    assert [i for block in blocks for i in block] == list(range(n))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_sweep_units_split_by_rows_left_and_skip_complete_stores():
    units = plan_units(["d"], TINY_GRID, {"d": False})  # rows per store at n=1: 16, 32 (filler), 16, 16
    done = {units[0]: (16, True), units[1]: (8, False)}
    shares = [units_of(Shard(rank, 2), units, done, 1) for rank in range(2)]
    assert shares == [[units[1]], [units[2], units[3]]]  # 24 + 16 + 16 rows left: middles at 12, 32, 48 of 56
    assert units_of(Shard(), units, {}, 1) == units
