"""`patch` on one process against two torchrun processes (gloo), on the organism.

    python benchmarks/bench_sharding.py [--quick] [--model M] [--pairs-per-task N] [--repeats R]

Runs the same `mdlm-interp patch` command line (1 against 50 masks, one pair per batch) as whole
commands, in turns, so that machine noise hits all alike: one process with one torch thread; one
process with as many threads as the machine has cores (the fair single-process rival on a small
machine); `torchrun --nproc-per-node 2`, one thread per process. Wall times include starting the
processes (importing torch and the toolkit, about 5 CPU-seconds a process), which the two-process run
pays twice. Prints the medians of wall time and of CPU time (all processes together), the speed-up of
two processes over one, and whether the two stores are the same (they must be: the same datasets
and attributes but the command line and the time).

On 2 shared cores expect little speed-up: the two processes share the cores that the threads of one
process would use, and every other job on the machine takes from both (on a busy machine two
processes win wall time only by taking a larger share of it; the CPU time says what they cost).
Sharding pays off with one process per GPU.
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mdlm_interp.store.compare import file_difference

ROOT = Path(__file__).resolve().parent.parent


def children_cpu() -> float:
    """Return the CPU seconds (user + system) of every finished child process so far, their children included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one pair per task, one repeat")
    parser.add_argument("--model", default="organism-llada", help="diffusion checkpoint (default organism-llada)")
    parser.add_argument("--pairs-per-task", type=int, default=2, help="pairs per task, 2 tasks (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each variant (default 3)")
    args = parser.parse_args()
    pairs, repeats = (1, 1) if args.quick else (args.pairs_per_task, args.repeats)
    cores = os.cpu_count() or 1

    folder = Path(tempfile.mkdtemp(prefix="bench-sharding-"))
    command = ["patch", "--model", args.model, "--task", "adjective+largest,verb+smallest", "--n-prompts", str(pairs),
               "--clean-masks", "1", "--corrupt-masks", "50", "--batch-size", "1", "--no-progress", "--overwrite"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    variants = {  # name -> (launcher, torch threads per process, output)
        "1 process, 1 thread": ([sys.executable], 1, folder / "one.h5"),
        f"1 process, {cores} threads": ([sys.executable], cores, folder / "threads.h5"),
        "2 processes (torchrun, gloo), 1 thread each": (torchrun, 1, folder / "two.h5"),
    }
    times, cpu = {name: [] for name in variants}, {name: [] for name in variants}
    try:
        for _ in range(repeats):
            for name, (launcher, threads, out) in variants.items():
                environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
                               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
                start, used = time.perf_counter(), children_cpu()
                subprocess.run([*launcher, "-m", "mdlm_interp", *command, "--out", str(out)], env=environment,
                               check=True, stdout=subprocess.DEVNULL)
                times[name].append(time.perf_counter() - start)
                cpu[name].append(children_cpu() - used)
        difference = file_difference(folder / "one.h5", folder / "two.h5")
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["1 process, 1 thread"]
    print(f"patch, {args.model}, 1 vs 50 masks, {2 * pairs} pairs in batches of 1, {cores} cores; "
          f"medians of {repeats} whole commands (process start included)")
    print("| variant | wall s | speed-up vs 1 process, 1 thread | CPU s (all processes) |")
    print("| --- | --- | --- | --- |")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.1f} | {base / seconds:.2f}x | {statistics.median(cpu[name]):.1f} |")
    two = medians["2 processes (torchrun, gloo), 1 thread each"]
    print(f"2 processes against 1: {base / two:.2f}x faster; the stores are "
          + ("identical (datasets and attributes but time and command line)" if difference is None
             else f"DIFFERENT: {difference}"))
    if difference is not None:
        sys.exit(1)


if __name__ == "__main__":
    main()
