"""python -m sweep.trial <trial dir>: re-run a sweep's trial by hand (also what each rank of a
multi-process trial runs, started by accelerate)."""

import os
import sys

from sweep.trial.run import main

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.exit(main(sys.argv[1:]))
