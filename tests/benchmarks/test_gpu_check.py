"""benchmarks/gpu_check.sh passes on the CPU (--device cpu): the CUDA benchmarks skipped, the agreement table printed."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_passes_on_the_cpu(tiny_checkpoint, tmp_path):
    model = str(tiny_checkpoint("llada"))
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--models", model,
                           "--dtypes", "float32"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "benchmarks on cpu: skipped" in done.stdout
    table = [line for line in done.stdout.splitlines() if line.startswith(f"| {model} | float32 |")]
    quantities = {line.split(" | ")[2] for line in table}
    assert {"logits", "examples/p_answer", "attention/mask_mass_from_answer", "lens/p_answer",
            "gradients/norms"} <= quantities
    assert all(line.split(" | ")[-1].strip(" |") == "0.000" for line in table)  # the CPU against itself
    assert "PASS: 10 of 10 quantities within tolerance" in done.stdout
    assert list(tmp_path.iterdir()) == []  # writes nothing where it runs
