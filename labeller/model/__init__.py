"""Model loading and on-disk formats: the only place that touches torch and TransformerLens."""
