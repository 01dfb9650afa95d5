"""What every results file says about itself: its kind and where it came from.

The kind (the ``kind`` attribute, one of :data:`KINDS`) is what ``retina-raf findings``
and :func:`analysis.results.results_kind` read to tell the files apart; the provenance
attributes (:func:`provenance`) are the same on every file (docs/results.md). Results
(:mod:`analysis.results`), trajectories (:mod:`analysis.trajectory`) and accuracies
(:mod:`analysis.accuracy`) all take them from here.
"""

from __future__ import annotations

import datetime as _dt

import retina_raf
from retina_raf import runs

# What a results file holds, in its ``kind`` attribute (files written before it existed get it
# from their variables when opened, in analysis.results.upgrade_layout)
KIND_RF_RESULTS = "rf_results"  # RFs and metrics of finished runs (run, channel, y, x)
KIND_TRAJECTORIES = "trajectories"  # the same at every retina snapshot (run, epoch, ...)
KIND_ACCURACY = "accuracy"  # test accuracies of the Fig. 3 networks (run, epoch)
KINDS = (KIND_RF_RESULTS, KIND_TRAJECTORIES, KIND_ACCURACY)


def provenance(**extra) -> dict:
    """Attributes every results file carries: package version, git commit, date, ..."""
    return {
        "retina_raf_version": retina_raf.__version__,
        "git_commit": runs.git_commit(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
