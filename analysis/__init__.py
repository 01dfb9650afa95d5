"""analysis: everything that reads a trained model or a results dataset (RFs, metrics, results, figures)."""
