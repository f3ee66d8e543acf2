"""Pair correlations accumulated in batches and merged across shards equal one torch.corrcoef
over all tokens at once."""

from __future__ import annotations

import math

import torch

from labeller.scan.correlations import PairSums, correlation_from_state, merge_pair_sums

CPU = torch.device("cpu")


def _activations(tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlated neuron sets with offsets far from zero (where naive sums lose digits)."""
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randn(tokens, 4, generator=gen, dtype=torch.float64)
    x = torch.cat([shared, torch.randn(tokens, 3, generator=gen, dtype=torch.float64)], dim=1)
    y = torch.cat(
        [-2 * shared[:, :2] + 0.1 * torch.randn(tokens, 2, generator=gen), shared[:, 2:] ** 3],
        dim=1,
    )
    x[:, 0] += 100.0  # a large mean next to a unit spread
    return x.float().double(), y.float().double()


def _corrcoef(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    joint = torch.corrcoef(torch.cat([x, y], dim=1).T)
    return joint[: x.shape[1], x.shape[1] :]


def _accumulate(x: torch.Tensor, y: torch.Tensor | None, batch: int) -> PairSums:
    sums = PairSums(x.shape[1], (x if y is None else y).shape[1], CPU)
    for start in range(0, x.shape[0], batch):
        sums.update(
            x[start : start + batch].float(),
            None if y is None else y[start : start + batch].float(),
        )
    return sums


def test_batched_sums_equal_one_pass_corrcoef() -> None:
    x, y = _activations(5000, seed=1)
    r = _accumulate(x, y, batch=333).correlation()
    assert r.shape == (7, 4)
    assert torch.allclose(r, _corrcoef(x, y), atol=1e-9, rtol=0)
    # the structure is really there: shared columns correlate strongly, noise ones do not
    assert r[0, 0] < -0.99 and r[2, 2] > 0.7 and abs(float(r[5, 1])) < 0.1


def test_within_one_set_is_the_symmetric_corrcoef_with_unit_diagonal() -> None:
    x, _ = _activations(2000, seed=2)
    r = _accumulate(x, None, batch=500).correlation()
    assert torch.allclose(r, torch.corrcoef(x.T), atol=1e-9, rtol=0)
    assert torch.allclose(r.diagonal(), torch.ones(7, dtype=torch.float64), atol=1e-12)


def test_two_shards_merge_to_the_single_pass() -> None:
    x, y = _activations(4001, seed=3)
    single = _accumulate(x, y, batch=4001)
    first, second = _accumulate(x[:1500], y[:1500], 256), _accumulate(x[1500:], y[1500:], 700)
    merged = merge_pair_sums([first.state(), second.state()])
    assert float(merged["count"]) == 4001
    for name, tensor in single.state().items():
        assert torch.allclose(merged[name], tensor, rtol=1e-12, atol=1e-9), name
    assert torch.allclose(correlation_from_state(merged), _corrcoef(x, y), atol=1e-9, rtol=0)
    restored = PairSums(7, 4, CPU)
    restored.load(merged)
    assert torch.equal(restored.correlation(), correlation_from_state(merged))


def test_a_constant_neuron_has_no_correlation_rather_than_zero() -> None:
    x, y = _activations(1000, seed=4)
    x[:, 3] = 0.3  # constant, not exactly representable: its summed variance is rounding only
    y[:, 1] = 0.0
    r = _accumulate(x, y, batch=128).correlation()
    assert all(math.isnan(v) for v in r[3].tolist())
    assert all(math.isnan(v) for v in r[:, 1].tolist())
    assert not r[:3, [0, 2, 3]].isnan().any()
