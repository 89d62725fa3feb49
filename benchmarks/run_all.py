"""``make bench``: the markdown table of recording against a plain forward pass, TransformerLens and
nnsight (benchmarks/bench_interp.py, which takes this script's arguments), measured side by side in
one run; then every other ``bench_*.py`` of this folder (interoperability routes, circuits, decoding,
the MA-loss step, the MoE routing hooks), each printing its own side-by-side ratios (``--quick`` is passed on).

Freed tensors go back to the system (``MALLOC_MMAP_THRESHOLD_``) so that the table's peak memory
column measures each variant. The loading benchmark (benchmarks/bench_model.py) runs on its own.
"""

import os
import subprocess
import sys
from pathlib import Path

folder = Path(__file__).parent
environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
quick = ["--quick"] if "--quick" in sys.argv else []
others = sorted(p.name for p in folder.glob("bench_*.py") if p.name not in ("bench_interp.py", "bench_model.py"))
for script, arguments in (("bench_interp.py", sys.argv[1:]), *((name, quick) for name in others)):
    print(f"== {script}", flush=True)
    code = subprocess.run([sys.executable, str(folder / script), *arguments], env=environment).returncode
    if code:
        sys.exit(code)
