"""Related neurons computed on the spot, for a catalogue whose scan kept no correlations."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from labeller.model.activations import batch_inputs, neuron_activations
from labeller.model.loading import LoadedModel
from labeller.records import RelatedNeuron
from labeller.scan.correlations import related_within


def related_on_windows(
    model: LoadedModel, windows: Sequence[Sequence[int]], layer: int, neuron: int
) -> tuple[list[RelatedNeuron], int]:
    """The neuron's most (anti-)correlated neurons of its layer over the tokens of `windows`
    (one forward pass), and how many tokens that was."""
    ids, mask = batch_inputs(model, windows)
    with torch.inference_mode():
        acts = neuron_activations(model, ids, [layer])[layer][mask]
        return related_within(acts, layer, neuron), int(acts.shape[0])
