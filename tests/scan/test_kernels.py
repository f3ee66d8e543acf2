"""The fused CPU statistics kernels agree with the torch path and with brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from builders import scan_params

from labeller.corpus import iter_documents, iter_windows
from labeller.scan import kernels
from labeller.scan.accumulators import AdaptiveHistogram, Moments
from labeller.scan.runner import Scanner


def hook_view(batch: int, width: int, n: int, seed: int) -> torch.Tensor:
    """Activations as the scan gets them: a hook's [B, 1 + T, N] tensor without its BOS row."""
    generator = torch.Generator().manual_seed(seed)
    full = torch.randn((batch, width + 1, n), generator=generator) * 3 + 0.5
    full[0, 1:, n // 2] = 0.0  # exact zeros, a constant run
    return full[:, 1:, :]


def test_as_array_reads_the_hooks_tensor_in_place() -> None:
    acts = hook_view(3, 5, 7, seed=0)
    x, skip = kernels.as_array(acts)
    assert skip == 1 and x.shape == (3, 6, 7) and x.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(x[:, skip:, :], acts.numpy())
    assert np.shares_memory(x, acts.numpy())
    transposed = torch.randn(7, 5, 3).permute(2, 1, 0)  # no parent to read: copied
    y, skip = kernels.as_array(transposed)
    assert skip == 0
    np.testing.assert_array_equal(y, transposed.numpy())


@pytest.mark.parametrize("n", [5, 300])  # one partial block; several blocks
def test_extremes_and_sums_equal_brute_force(n: int) -> None:
    acts = hook_view(4, 9, n, seed=n)
    lengths = np.array([9, 2, 9, 5])
    mask = torch.arange(9)[None, :] < torch.from_numpy(lengths)[:, None]
    x, skip = kernels.as_array(acts)
    window_max, low, high = kernels.window_extremes(x, skip, lengths)
    padded = acts.masked_fill(~mask[:, :, None], -math.inf)
    real = acts[mask]
    assert torch.equal(window_max, padded.amax(dim=1))
    assert torch.equal(low, real.amin(dim=0)) and torch.equal(high, real.amax(dim=0))

    histogram = AdaptiveHistogram(n, 16, torch.device("cpu"))
    histogram.cover(low, high)
    shift = real.mean(dim=0)
    sums, positive = kernels.power_sums_and_counts(
        x,
        skip,
        lengths,
        low,
        high,
        shift,
        histogram.inverse_width,
        histogram.first,
        histogram.counts,
    )
    centred = real.double() - shift.double()
    for power in range(4):
        expected = (centred ** (power + 1)).sum(dim=0)
        scale = (centred.abs() ** (power + 1)).sum(dim=0)
        assert ((sums[power] - expected).abs() <= 1e-6 * scale + 1e-9).all()
    assert torch.equal(positive, (real > 0).double().sum(dim=0))

    by_torch = AdaptiveHistogram(n, 16, torch.device("cpu"))
    scratch = (torch.empty_like(real), torch.empty(real.shape, dtype=torch.int32))
    by_torch.update(real.contiguous(), low, high, scratch)
    assert torch.equal(histogram.counts, by_torch.counts)
    assert torch.equal(histogram.first, by_torch.first)


def test_a_value_outside_the_histogram_is_an_error_not_a_lost_count() -> None:
    acts = hook_view(2, 4, 3, seed=1)
    x, skip = kernels.as_array(acts)
    lengths = np.array([4, 4])
    histogram = AdaptiveHistogram(3, 8, torch.device("cpu"))
    histogram.cover(torch.zeros(3), torch.full((3,), 0.01))  # far too narrow for the batch
    real = acts.reshape(-1, 3)
    with pytest.raises(RuntimeError, match="outside their histogram's range"):
        kernels.power_sums_and_counts(
            x,
            skip,
            lengths,
            real.amin(dim=0),
            real.amax(dim=0),
            torch.zeros(3),
            histogram.inverse_width,
            histogram.first,
            histogram.counts,
        )


def test_moments_from_kernel_sums_equal_the_torch_path() -> None:
    fused, by_torch = Moments(6, torch.device("cpu")), Moments(6, torch.device("cpu"))
    for seed in range(3):
        acts = hook_view(3, 8, 6, seed=seed) * (seed + 1)
        real = acts.reshape(-1, 6).contiguous()
        low, high = real.amin(dim=0), real.amax(dim=0)
        x, skip = kernels.as_array(acts)
        histogram = AdaptiveHistogram(6, 8, torch.device("cpu"))
        histogram.cover(low, high)
        shift = fused.shift(low, high)
        sums, positive = kernels.power_sums_and_counts(
            x,
            skip,
            np.full(3, 8),
            low,
            high,
            shift,
            histogram.inverse_width,
            histogram.first,
            histogram.counts,
        )
        fused.add_sums(float(real.shape[0]), shift, sums, positive, low, high)
        by_torch.update(real, low, high, (torch.empty_like(real), torch.empty_like(real)))
    for name, value in fused.state().items():
        torch.testing.assert_close(value, by_torch.state()[name], rtol=1e-6, atol=1e-9)


def test_scan_state_equals_the_torch_path(tiny_model, tiny_model_dir, tiny_corpus, monkeypatch):
    """Top windows, band samples, subset tops and histograms identical, moments to float
    tolerance, whichever path computed the statistics (short windows in the batches too)."""
    params = scan_params(tiny_model_dir, tiny_corpus, band_windows=2, subset_top_k=3)
    windows = list(iter_windows(iter_documents(params.dataset), tiny_model.encode, params.ctx))

    def scan(torch_statistics: bool) -> Scanner:
        monkeypatch.setenv("LABELLER_TORCH_STATISTICS", "1" if torch_statistics else "0")
        scanner = Scanner(tiny_model, params)
        for start in range(0, len(windows), 7):
            scanner.process(windows[start : start + 7])
        scanner.flush()
        return scanner

    fused, by_torch = scan(False), scan(True)
    assert any(len(w.token_ids) < params.ctx for w in windows)
    for layer in params.layers:
        a, b = fused.layers[layer].state(), by_torch.layers[layer].state()
        for part in ("top", "bands", "histogram"):
            for name, value in a[part].items():  # type: ignore[union-attr]
                other = b[part][name]  # type: ignore[index]
                if part == "bands" and name == "acts":  # empty slots hold stale values
                    kept = a[part]["window"] >= 0  # type: ignore[index]
                    value, other = value[kept], other[kept]
                assert torch.equal(value, other), (layer, part, name)
        assert a["subset_top"].keys() == b["subset_top"].keys()  # type: ignore[union-attr]
        for subset, top in a["subset_top"].items():  # type: ignore[union-attr]
            for name, value in top.items():
                assert torch.equal(value, b["subset_top"][subset][name]), (subset, name)  # type: ignore[index]
        for moment, value in a["moments"].items():  # type: ignore[union-attr]
            torch.testing.assert_close(value, b["moments"][moment], rtol=1e-5, atol=1e-7)  # type: ignore[index]
