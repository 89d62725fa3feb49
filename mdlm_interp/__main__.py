import os
import sys

from mdlm_interp.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # One rank of a torchrun run: its outputs are written and its process group is left. Ending without the
    # interpreter's teardown keeps gloo's threads from aborting the process at exit ("terminate called
    # without an active exception", seen in about 1 of 8 runs with torch 2.13 on the CPU).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
