"""The perturbation experiments' names, apart from `perturb` so that naming one imports no torch.

The TUI lists and titles the experiments while the model is still loading (torch takes seconds to
import, and the screen must not wait for it); `perturb.EXPERIMENTS` maps each kind to its code.
"""

from __future__ import annotations

from enum import StrEnum


class PerturbationKind(StrEnum):
    """One perturbation experiment; the order here is the order they run and are shown in."""

    DELETE = "delete"  # drop each token before the target
    RESAMPLE = "resample"  # replace each token by random vocabulary tokens
    NOISE = "noise"  # add Gaussian noise to each token's embedding
    INSERT = "insert"  # insert a random token after each position before the target
    TRUNCATE = "truncate"  # keep only the last k tokens, for every k


# Random draws per perturbed position, for the experiments that draw: the defaults the
# experiments run with (`perturb.py`) and the numbers the TUI states, so they cannot disagree.
SAMPLES: dict[PerturbationKind, int] = {
    PerturbationKind.RESAMPLE: 8,
    PerturbationKind.NOISE: 8,
    PerturbationKind.INSERT: 4,
}
