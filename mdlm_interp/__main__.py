import sys

from mdlm_interp.cli import main

sys.exit(main())
