"""retina-raf: low-dimensional error feedback (RAF) and retinal receptive fields.

``retina_raf`` trains (learning rules, model, data, runs, sweeps); ``analysis`` reads
what training wrote (receptive fields, metrics, results, figures).
"""

__version__ = "0.1.0"
