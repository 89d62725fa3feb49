"""Side-by-side timing shared by the benchmarks: every variant runs in turn, so machine noise hits all alike."""

import statistics
import time


def median_times(runs: dict, repeats: int) -> dict:
    """Return name -> median seconds, running the callables in turns after one warm-up each."""
    times = {name: [] for name in runs}
    for run in runs.values():
        run()
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
