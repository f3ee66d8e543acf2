"""The bundled demo: a corpus every Python has, and two tiny models trained on it, for offline use.

The trained GELU/SoLU pair ships under ``assets/`` so a new user can scan, explain and annotate
without downloading weights; ``labeller train-demo`` rebuilds them from the same corpus.
"""

from pathlib import Path

DEMO_MODELS_DIR: Path = Path(__file__).parent / "assets"
DEMO_MODEL_NAMES: tuple[str, ...] = ("demo-gelu-1l", "demo-solu-1l")
DEMO_TOKENS = 200_000  # tokens of the demo corpus `labeller demo` scans per model


def demo_model_path(name: str) -> Path:
    """Return the shipped directory of a demo model; an unknown name fails with the valid ones."""
    if name not in DEMO_MODEL_NAMES:
        choices = ", ".join(DEMO_MODEL_NAMES)
        raise ValueError(f"unknown demo model {name!r}; choose one of {choices}")
    return DEMO_MODELS_DIR / name
