"""retina-raf: low-dimensional error feedback (RAF) and retinal receptive fields.

``retina_raf`` trains (learning rules, model, data, runs, sweeps); ``analysis`` reads
what training wrote (receptive fields, metrics, results, figures); ``retina_raf_cli`` is
the ``retina-raf`` command line over both. Each imports only the ones before it.
"""

import os

# torch's CPU allocator backs tensors of 2 MB and more with transparent huge pages when this is
# set before torch allocates anything: a training step allocates its gradients and spectra
# afresh (hundreds of MB), and with 4 KB pages the page faults alone cost a visible share of a
# CPU step (fc_1's 134 MB weight gradient; docs/performance.md#parts). It only takes effect
# when retina_raf is imported before torch (the `retina-raf` command does);
# THP_MEM_ALLOC_ENABLE=0 in the environment turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

# The one version string: pyproject.toml reads it from here (tool.setuptools.dynamic) and
# CITATION.cff repeats it (tests/test_citation.py, tests/test_packaging.py).
__version__ = "0.1.0"
