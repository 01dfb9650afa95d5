"""A local worker process of :func:`retina_raf.sweep.local.run_local`:
``python -m retina_raf.sweep OUT`` trains the runs (JSON on stdin) that nobody else has taken."""

import sys

from retina_raf.sweep.local import worker_main

worker_main(sys.argv[1])
