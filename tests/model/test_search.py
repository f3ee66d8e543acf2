"""Search across neurons: the ranking equals sorting every traced neuron by hand."""

from __future__ import annotations

import pytest
import torch

from labeller.model.activations import trace_activations
from labeller.model.search import ranks_in_layer, search_neurons
from labeller.model.tokens import token_text

TEXT = "def value(self):\n    return self.token for the model"


@pytest.fixture(scope="module")
def ids(tiny_model) -> list[int]:
    return tiny_model.encode(TEXT)


def _all(model, ids: list[int]) -> torch.Tensor:
    """[tokens, layers * d_mlp], one layer traced at a time."""
    return torch.cat([trace_activations(model, ids, layer) for layer in range(2)], dim=1)


def test_overall_ranking_is_each_neurons_max_over_the_text(tiny_model, ids):
    found = search_neurons(tiny_model, ids, [0, 1], top=10)
    acts = _all(tiny_model, ids)
    best, where = acts.max(dim=0)
    expected = best.topk(10).indices.tolist()
    d_mlp = tiny_model.d_mlp
    assert [(h.layer * d_mlp + h.neuron) for h in found.overall] == expected
    for hit in found.overall:
        column = hit.layer * d_mlp + hit.neuron
        assert hit.position == int(where[column])
        assert hit.activation == pytest.approx(float(acts[hit.position, column]), abs=1e-5)
    assert found.neurons_searched == 2 * d_mlp
    assert found.layers == [0, 1]


def test_per_token_ranking(tiny_model, ids):
    found = search_neurons(tiny_model, ids, [1], per_token=3)
    acts = trace_activations(tiny_model, ids, 1)
    assert len(found.per_token) == len(ids)
    for position, hits in enumerate(found.per_token):
        assert [h.neuron for h in hits] == acts[position].topk(3).indices.tolist()
        assert all(h.layer == 1 and h.position == position for h in hits)


def test_relative_ranking_divides_by_each_neurons_max(tiny_model, ids):
    d_mlp = tiny_model.d_mlp
    maxes = {0: [1.0] * d_mlp, 1: [float(n + 1) for n in range(d_mlp)]}
    maxes[1][3] = 0.0  # never fired in the scan: left out
    found = search_neurons(tiny_model, ids, [0, 1], top=2 * d_mlp, scale=maxes, relative=True)
    assert found.relative
    assert (1, 3) not in {(h.layer, h.neuron) for h in found.overall}
    keys = [h.relative for h in found.overall]
    assert keys == sorted(keys, reverse=True)
    for hit in found.overall:
        assert hit.relative == pytest.approx(hit.activation / maxes[hit.layer][hit.neuron])


def test_rank_in_layer_counts_the_neurons_above(tiny_model, ids):
    windows, positions = [ids, ids[:6]], [4, 5]
    ranks = ranks_in_layer(tiny_model, windows, positions, 1, 7, max_batch=1)
    for window, position, rank in zip(windows, positions, ranks, strict=True):
        row = trace_activations(tiny_model, window, 1)[position]
        assert rank == int((row > row[7]).sum()) + 1


def test_byte_tokens_read_as_hex_not_replacement_characters(tiny_model):
    ids = tiny_model.encode("café ☃")
    tokens = tiny_model.token_strings(ids)
    assert "\ufffd" not in "".join(tokens)
    assert "<0xE2>" in "".join(tokens)  # the snowman's first byte, on its own
    assert token_text(tiny_model.tokenizer, ids[0]) == tokens[0]


def test_traces_of_every_found_neuron(tiny_model, ids):
    found = search_neurons(tiny_model, ids, [0, 1], top=3, per_token=2)
    wanted = {(h.layer, h.neuron) for h in found.overall}
    wanted |= {(h.layer, h.neuron) for row in found.per_token for h in row}
    assert set(found.traces) == wanted
    for (layer, neuron), values in found.traces.items():
        expected = trace_activations(tiny_model, ids, layer)[:, neuron].tolist()
        assert values == pytest.approx(expected, abs=1e-5)


def test_raw_ranking_still_reports_each_share(tiny_model, ids):
    d_mlp = tiny_model.d_mlp
    maxes = {1: [2.0] * d_mlp}
    raw = search_neurons(tiny_model, ids, [1], top=5)
    shared = search_neurons(tiny_model, ids, [1], top=5, scale=maxes)
    assert not shared.relative
    assert [(h.neuron, h.activation) for h in shared.overall] == [
        (h.neuron, h.activation) for h in raw.overall
    ]
    assert all(h.relative == pytest.approx(h.activation / 2.0) for h in shared.overall)
    assert all(h.relative is None for h in raw.overall)
