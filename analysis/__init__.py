"""analysis: everything that reads a trained model or a results dataset.

Receptive fields (``rf``), their metrics (``metrics``, ``synthetic``), results datasets
(``results``; the kind and provenance every results file carries: ``provenance``), one value
per run (``per_run``), statistics (``stats``), figures (``figures``) and reports
(``report``).
"""
