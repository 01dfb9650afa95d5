"""analysis: everything that reads a trained model or a results dataset.

Receptive fields (``rf``), their metrics (``metrics``, ``synthetic``), results datasets
(``results``; the kind and provenance every results file carries: ``provenance``), one value
per run (``per_run``), statistics (``stats``), figures (``figures``) and reports
(``report``); the feedback into the retina, read from checkpoints: whether Kolen-Pollack can
align and where P is (``alignment``), and the readout the retina learns through
(``feedback_readout``).
"""
