"""Perturbation experiments: each batched result equals running its perturbed inputs one by one."""

from __future__ import annotations

import pytest
import torch

from labeller.model import perturb
from labeller.model.perturb import (
    EXPERIMENTS,
    delete_each,
    insert_each,
    noise_each,
    resample_each,
    trace_many,
    trace_neuron,
    truncate,
)
from labeller.model.perturb_kinds import PerturbationKind

TEXT = "def value(self):\n    return self.token for the model"
LAYER, NEURON = 1, 5


@pytest.fixture(scope="module")
def ids(tiny_model) -> list[int]:
    return tiny_model.encode(TEXT)


def at(model, ids: list[int], position: int) -> float:
    return trace_neuron(model, ids, LAYER, NEURON)[position]


def test_target_defaults_to_the_max_token(tiny_model, ids):
    values = trace_neuron(tiny_model, ids, LAYER, NEURON)
    result = delete_each(tiny_model, ids, LAYER, NEURON)
    assert result.target == max(range(len(values)), key=values.__getitem__)
    assert result.base == pytest.approx(values[result.target])


def test_trace_many_matches_one_at_a_time(tiny_model, ids):
    texts = [ids, ids[:3], ids[2:9]]
    batched = trace_many(tiny_model, texts, LAYER, NEURON, max_batch=2)
    for text, values in zip(texts, batched, strict=True):
        assert values == pytest.approx(trace_neuron(tiny_model, text, LAYER, NEURON), abs=1e-5)


def test_delete_each_earlier_token(tiny_model, ids):
    target = 8
    result = delete_each(tiny_model, ids, LAYER, NEURON, target)
    assert result.positions == list(range(target))
    for p in (0, 3, 7):
        without = ids[:p] + ids[p + 1 : target + 1]
        assert result.values[p] == pytest.approx(at(tiny_model, without, target - 1), abs=1e-5)
    assert result.deltas[2] == pytest.approx(result.values[2] - result.base)
    assert delete_each(tiny_model, ids, LAYER, NEURON, 0).positions == []


def test_truncate_keeps_the_last_k_tokens(tiny_model, ids):
    target = 6
    result = truncate(tiny_model, ids, LAYER, NEURON, target)
    assert result.positions == list(range(1, target + 2))
    for k in (1, 4):
        kept = ids[target + 1 - k : target + 1]
        assert result.values[k - 1] == pytest.approx(at(tiny_model, kept, k - 1), abs=1e-5)
    assert result.values[-1] == pytest.approx(result.base, abs=1e-5)


def test_resample_is_seeded_with_mean_and_spread(tiny_model, ids):
    first = resample_each(tiny_model, ids, LAYER, NEURON, 5, samples=4, seed=1)
    assert first == resample_each(tiny_model, ids, LAYER, NEURON, 5, samples=4, seed=1)
    other = resample_each(tiny_model, ids, LAYER, NEURON, 5, samples=4, seed=2)
    assert first.values != other.values
    assert first.positions == list(range(6))
    assert len(first.spread) == 6 and all(s >= 0 for s in first.spread)
    # Recompute one position from the same random draws.
    draws = perturb._random_tokens(tiny_model, 6 * 4, 1)
    special = set(tiny_model.tokenizer.all_special_ids)
    assert not special & set(draws)
    values = []
    for s in range(4):
        changed = list(ids[:6])
        changed[2] = draws[2 * 4 + s]
        values.append(at(tiny_model, changed, 5))
    assert first.values[2] == pytest.approx(sum(values) / 4, abs=1e-5)
    assert first.spread[2] == pytest.approx(torch.tensor(values).std(correction=0).item(), abs=1e-5)


def test_insert_a_random_token_after_each_position(tiny_model, ids):
    target = 5
    result = insert_each(tiny_model, ids, LAYER, NEURON, target, samples=2, seed=3)
    assert result.positions == list(range(target))
    draws = perturb._random_tokens(tiny_model, target * 2, 3)
    values = [
        at(tiny_model, [*ids[:2], draws[1 * 2 + s], *ids[2 : target + 1]], target + 1)
        for s in range(2)
    ]
    assert result.values[1] == pytest.approx(sum(values) / 2, abs=1e-5)


def test_insert_drops_the_first_token_when_the_context_is_full(tiny_model):
    limit = tiny_model.context_limit
    ids = tiny_model.encode(" value" * (limit + 5))[:limit]
    result = insert_each(tiny_model, ids, LAYER, NEURON, limit - 1, samples=1)
    assert len(result.values) == limit - 1


def test_noise_on_the_embedding_moves_only_with_noise(tiny_model, ids):
    silent = noise_each(tiny_model, ids, LAYER, NEURON, 6, scale=0.0, samples=2)
    assert silent.deltas == pytest.approx([0.0] * 7, abs=1e-5)
    loud = noise_each(tiny_model, ids, LAYER, NEURON, 6, scale=3.0, samples=4, seed=0)
    assert any(abs(d) > 1e-4 for d in loud.deltas)
    assert loud == noise_each(tiny_model, ids, LAYER, NEURON, 6, scale=3.0, samples=4, seed=0)
    assert loud.positions == list(range(7)), "every token up to the target, itself included"


def test_batching_does_not_change_results(tiny_model, ids):
    assert list(EXPERIMENTS) == list(PerturbationKind), "every kind has its experiment"
    for name, experiment in EXPERIMENTS.items():
        whole = experiment(tiny_model, ids, LAYER, NEURON, 7)
        assert whole.kind is name
        chunked = experiment(tiny_model, ids, LAYER, NEURON, 7, max_batch=3)
        assert chunked.values == pytest.approx(whole.values, abs=1e-5), name


def test_bad_inputs_are_value_errors(tiny_model, ids):
    limit = tiny_model.context_limit
    with pytest.raises(ValueError, match="reads at most"):
        delete_each(tiny_model, [ids[0]] * (limit + 1), LAYER, NEURON)
    with pytest.raises(ValueError, match="no tokens"):
        truncate(tiny_model, [], LAYER, NEURON)
    with pytest.raises(ValueError, match="outside"):
        truncate(tiny_model, ids, LAYER, NEURON, len(ids))


def test_embedding_hook_fires_on_a_hugging_face_bridge(tiny_hf_dir):
    from labeller.model.loading import load_model

    model = load_model(str(tiny_hf_dir), device="cpu")
    assert any(name in model.bridge.hook_dict for name in perturb.EMBED_HOOKS)
    ids = model.encode(TEXT)[:10]
    silent = noise_each(model, ids, 0, 3, 5, scale=0.0, samples=1)
    loud = noise_each(model, ids, 0, 3, 5, scale=5.0, samples=2)
    assert silent.deltas == pytest.approx([0.0] * 6, abs=1e-5)
    assert loud.deltas != pytest.approx([0.0] * 6, abs=1e-5)


def test_each_result_says_how_many_samples_it_drew(tiny_model, ids):
    from labeller.model.perturb_kinds import SAMPLES
    from labeller.tui.experiment_view import TITLES

    for kind, experiment in EXPERIMENTS.items():
        result = experiment(tiny_model, ids, LAYER, NEURON, 4)
        assert result.samples == SAMPLES.get(kind, 1)
        if kind in SAMPLES:  # the TUI states the number the code runs with
            assert str(SAMPLES[kind]) in TITLES[kind][1]
    assert resample_each(tiny_model, ids, LAYER, NEURON, 4, samples=3).samples == 3
