"""``make bench``: the markdown table of recording against a plain forward pass, TransformerLens and
nnsight (benchmarks/bench_interp.py), measured side by side in one run.

Freed tensors go back to the system (``MALLOC_MMAP_THRESHOLD_``) so that the table's peak memory
column measures each variant. The loading benchmark (benchmarks/bench_model.py) runs on its own.
"""

import os
import subprocess
import sys
from pathlib import Path

script = Path(__file__).parent / "bench_interp.py"
environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
sys.exit(subprocess.run([sys.executable, str(script), *sys.argv[1:]], env=environment).returncode)
