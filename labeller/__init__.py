"""labeller: scan, explain, score and hand-label the MLP neurons of transformer language models."""

__version__ = "0.1.0"
