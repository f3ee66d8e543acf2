"""The fused CPU statistics kernels agree with the torch path and with brute force."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from builders import scan_params

from labeller.corpus import iter_documents, iter_windows
from labeller.records import ScanParams
from labeller.scan import kernels
from labeller.scan.accumulators import AdaptiveHistogram, BandSample, Moments, TopWindows
from labeller.scan.runner import LayerNotFinite, LayerState, Scanner, update_statistics


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


def torch_path(acts: torch.Tensor, lengths: np.ndarray, parts: dict, index, hashes, priority):
    """The same batch through the accumulators' own torch updates (the GPU path)."""
    mask = torch.arange(acts.shape[1])[None, :] < torch.from_numpy(lengths)[:, None]
    padded = acts.masked_fill(~mask[:, :, None], -math.inf)
    real = acts[mask].contiguous()
    window_max = padded.amax(dim=1)
    low, high = real.amin(dim=0), real.amax(dim=0)
    scratch = (torch.empty_like(real), torch.empty_like(real))
    parts["moments"].update(real, low, window_max.amax(dim=0), scratch)
    counted = (torch.empty_like(real), torch.empty(real.shape, dtype=torch.int32))
    parts["histogram"].update(real, low, high, counted)
    parts["top"].update(padded, window_max, index, hashes)
    parts["bands"].update(padded, window_max, index, priority)
    return window_max


def accumulators(n: int, ctx: int = 9) -> dict:
    cpu = torch.device("cpu")
    return {
        "moments": Moments(n, cpu),
        "histogram": AdaptiveHistogram(n, 16, cpu),
        "top": TopWindows(3, n, ctx, cpu),
        "bands": BandSample(2, 8, n, ctx, cpu),
    }


def both_paths(n: int, scales: tuple[float, ...]) -> tuple[dict, dict, list[int]]:
    """Batches of activations times each scale through the kernels and the torch path; each
    batch's window maxima asserted equal on the way. Also returns how many rows each batch
    had kept."""
    fused, by_torch = accumulators(n), accumulators(n)
    generator = torch.Generator().manual_seed(n)
    kept_rows = []
    for batch, scale in enumerate(scales):
        acts = hook_view(4, 9, n, seed=n + batch) * scale
        lengths = np.array([9, 2, 9, 5])
        index = torch.arange(4) + 4 * batch
        hashes = torch.randint(-(2**62), 2**62, (4,), generator=generator)
        hashes[3] = hashes[0]  # the same text twice in a batch: only the first may enter
        priority = torch.randint(-(2**62), 2**62, (4,), generator=generator)
        update = kernels.LayerUpdate(
            acts, fused["moments"], fused["histogram"], [(fused["top"], None)], fused["bands"]
        )
        (window_max,), kept = kernels.update_layers([update], lengths, index, hashes, priority)
        assert torch.equal(window_max, torch_path(acts, lengths, by_torch, index, hashes, priority))
        assert bool((kept < 4).all())
        kept_rows.append(kept.numel())
    return fused, by_torch, kept_rows


def assert_kept_equal(fused: dict, by_torch: dict, batches: int) -> None:
    for part in ("histogram", "top", "bands"):
        a, b = fused[part].state(), by_torch[part].state()
        for name, value in a.items():
            other = b[name]
            if part == "bands" and name == "acts":  # empty slots hold stale values
                value, other = value[a["window"] >= 0], other[a["window"] >= 0]
            assert torch.equal(value, other), (part, name)
    assert bool((fused["histogram"].counts.sum(dim=1) == batches * (9 + 2 + 9 + 5)).all())


def assert_exact_parts_equal(a: dict, b: dict, layer: int) -> None:
    """A layer's top windows, band samples and histogram, as `LayerState.state` gives them,
    equal on both paths (band slots still empty hold stale values, so only kept ones count)."""
    for part in ("top", "bands", "histogram"):
        for name, value in a[part].items():
            other = b[part][name]
            if part == "bands" and name == "acts":
                kept = a[part]["window"] >= 0
                value, other = value[kept], other[kept]
            assert torch.equal(value, other), (layer, part, name)


@pytest.mark.parametrize("n", [5, 300])  # one partial block; several blocks
def test_layer_update_equals_the_torch_path(n: int) -> None:
    """Window maxima, histograms (growing as later batches widen the range), top windows and
    band samples identical to the torch path's; moments to float tolerance."""
    fused, by_torch, kept_rows = both_paths(n, (1, 4, 7, 10))  # the range grows
    assert min(kept_rows) > 0
    assert_kept_equal(fused, by_torch, 4)
    for name, value in fused["moments"].state().items():
        torch.testing.assert_close(value, by_torch["moments"].state()[name], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("n", [5, 300])
def test_batches_that_no_window_of_can_enter_leave_the_top_windows_as_the_torch_path_does(
    n: int,
) -> None:
    """After a wide batch, narrower ones: most neurons' batch maxima are below the lowest max
    their top-k keeps, so the kernels pass them over; what is kept is still the torch path's."""
    fused, by_torch, _ = both_paths(n, (10, 1, 10, 2, 10.5, 0.5, 10, 11, 3))
    assert_kept_equal(fused, by_torch, 9)


def test_a_batch_of_more_token_rows_than_a_uint16_count_holds_equals_the_torch_path() -> None:
    """A block counts its bins in uint16: with 65,535 token rows or more in a batch the counts
    reach the histograms part-way through the batch (in a batch after the first too, which
    then takes two passes over the block, not one); nothing is lost or counted twice."""
    n, tokens = 5, 33_000
    fused, by_torch = accumulators(n, ctx=tokens), accumulators(n, ctx=tokens)
    lengths = np.array([tokens, tokens - 1])
    for batch, scale in enumerate((1, 3)):  # the second batch widens the range
        acts = hook_view(2, tokens, n, seed=batch) * scale
        acts[:, :, n // 2] = 0.0  # every row in one bin: more than a uint16 counts
        index = torch.arange(2) + 2 * batch
        hashes = index * 7 + 1
        update = kernels.LayerUpdate(
            acts, fused["moments"], fused["histogram"], [(fused["top"], None)], fused["bands"]
        )
        (window_max,), _ = kernels.update_layers([update], lengths, index, hashes, index * 11)
        assert torch.equal(
            window_max, torch_path(acts, lengths, by_torch, index, hashes, index * 11)
        )
    for name, value in fused["histogram"].state().items():
        assert torch.equal(value, by_torch["histogram"].state()[name]), name
    assert bool((fused["histogram"].counts.sum(dim=1) == 2 * int(lengths.sum())).all())
    for name, value in fused["moments"].state().items():
        # float tolerance of the moment's scale: the third sums to near 0 for some neurons
        scale = float(value.abs().max()) if value.numel() > 1 else 1.0
        other = by_torch["moments"].state()[name]
        torch.testing.assert_close(value, other, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize(
    ("caches", "expected"),
    [
        ({"index0": ("1", "Data", "48K"), "index2": ("2", "Unified", "2048K")}, 2 * 2**20),
        ({"index2": ("2", "Unified", "1M"), "index3": ("3", "Unified", "30M")}, 2**20),
        ({"index0": ("1", "Data", "32K"), "index1": ("1", "Instruction", "32K")}, 0),
        ({"index2": ("2", "Unified", "lots")}, 0),
        ({}, 0),
    ],
)
def test_l2_bytes_reads_the_level_2_cache_from_sysfs(tmp_path, caches, expected) -> None:
    for index, (level, kind, size) in caches.items():
        folder = tmp_path / index
        folder.mkdir()
        (folder / "level").write_text(level + "\n")
        (folder / "type").write_text(kind + "\n")
        (folder / "size").write_text(size + "\n")
    assert kernels.l2_bytes(tmp_path) == expected


@pytest.fixture(params=[(0, 64), (512 * 2**10, 64), (2 * 2**20, 128)], ids=lambda p: f"L2 {p[0]}")
def built_for_l2(request, monkeypatch, tmp_path) -> Iterator[int]:
    """The kernels built as for a machine with the given L2 (0: unknown); the block size it
    gives. The library is built again afterwards for this machine."""
    l2, block = request.param
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(kernels, "l2_bytes", lambda: l2)
    kernels._library.cache_clear()
    kernels.build_error.cache_clear()
    yield block
    kernels._library.cache_clear()
    kernels.build_error.cache_clear()


def test_one_call_for_several_layers_of_several_blocks_equals_the_torch_path(
    monkeypatch, built_for_l2: int
) -> None:
    """The kernels number every layer's blocks in one loop: each layer's accumulators and the
    rows kept must be what the torch path gives layer by layer (widths of several blocks, the
    last one partly filled, and of less than one), whatever block size the machine's L2 gives."""
    params = ScanParams(model="m", dataset="d", layers=[0, 3, 5], top_k=3, random=0)
    widths = {0: 300, 3: 300, 5: 40}
    block = kernels._library().block_neurons()
    assert block == built_for_l2
    assert 2 * block < 300 and 300 % block and block > 40

    def run(torch_statistics: bool) -> tuple[dict[int, LayerState], list[torch.Tensor]]:
        monkeypatch.setenv("LABELLER_TORCH_STATISTICS", "1" if torch_statistics else "0")
        states = {layer: LayerState(params, n, torch.device("cpu")) for layer, n in widths.items()}
        mask = torch.ones((4, 9), dtype=torch.bool)
        mask[1, 3:] = False  # a short window
        kept = []
        for at, scale in enumerate((1, 5, 2, 9)):
            acts = {
                layer: hook_view(4, 9, n, seed=10 * at + layer) * scale
                for layer, n in widths.items()
            }
            for layer in acts:
                acts[layer][1, 3:] = 0.0  # padding, as the hook gives it
            index = torch.arange(4) + 4 * at
            update = (states, acts, mask, False, index, index * 7 + 1, index * 11, [None] * 4)
            kept.append(update_statistics(*update).unique())
        return states, kept

    (fused, fused_kept), (by_torch, torch_kept) = run(False), run(True)
    assert all(torch.equal(a, b) for a, b in zip(fused_kept, torch_kept, strict=True))
    for layer in widths:
        a, b = fused[layer].state(), by_torch[layer].state()
        assert_exact_parts_equal(a, b, layer)
        for moment, value in a["moments"].items():  # type: ignore[union-attr]
            # float tolerance of the moment's scale: the third sums to near 0 for some neurons
            scale = float(value.abs().max()) if value.numel() > 1 else 1.0
            other = b["moments"][moment]  # type: ignore[index]
            torch.testing.assert_close(value, other, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("torch_statistics", [False, True])
@pytest.mark.parametrize("batch", [0, 2])  # the first batch (extremes first) and a later one
def test_a_nan_or_infinite_activation_stops_the_update_naming_its_layer(
    bad: float, torch_statistics: bool, batch: int, monkeypatch
) -> None:
    """Before, a NaN made the kernels write outside their counts (a crash) and the torch path
    loop for ever; an infinity was binned as garbage. The kernels update every layer in one
    call, and still say which layer it was."""
    monkeypatch.setenv("LABELLER_TORCH_STATISTICS", "1" if torch_statistics else "0")
    params = ScanParams(model="m", dataset="d", layers=[0, 3, 5])
    states = {layer: LayerState(params, 300, torch.device("cpu")) for layer in params.layers}
    mask = torch.ones((4, 9), dtype=torch.bool)
    for at in range(batch + 1):
        acts = {layer: hook_view(4, 9, 300, seed=at + layer) for layer in params.layers}
        if at == batch:
            acts[3][2, 4, 290] = bad
        index = torch.arange(4) + 4 * at
        update = (states, acts, mask, True, index, index * 7, index * 11, [None] * 4)
        if at < batch:
            update_statistics(*update)
            continue
        with pytest.raises(LayerNotFinite, match="NaN or infinite") as raised:
            update_statistics(*update)
        assert raised.value.layer == 3


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
        assert_exact_parts_equal(a, b, layer)
        assert a["subset_top"].keys() == b["subset_top"].keys()  # type: ignore[union-attr]
        for subset, top in a["subset_top"].items():  # type: ignore[union-attr]
            for name, value in top.items():
                assert torch.equal(value, b["subset_top"][subset][name]), (subset, name)  # type: ignore[index]
        for moment, value in a["moments"].items():  # type: ignore[union-attr]
            torch.testing.assert_close(value, b["moments"][moment], rtol=1e-5, atol=1e-7)  # type: ignore[index]


@pytest.fixture
def fresh_kernels(monkeypatch, tmp_path):
    """The kernels built (or not) anew, into an empty cache; the usual library again after."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    kernels._library.cache_clear()
    kernels.build_error.cache_clear()
    yield tmp_path / "cache" / "labeller"
    kernels._library.cache_clear()
    kernels.build_error.cache_clear()


def test_the_kernels_are_built_once_and_then_loaded_from_the_cache(fresh_kernels):
    assert kernels.build_error() is None and kernels.available()
    (built,) = fresh_kernels.glob("scan-kernels-*.so")
    stamp = built.stat().st_mtime_ns
    kernels._library.cache_clear()
    kernels._library()  # a later process: loads, does not rebuild
    assert [p.name for p in fresh_kernels.iterdir()] == [built.name]
    assert built.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("content", ["garbage", "another library"])
def test_a_damaged_library_in_the_cache_is_built_again(fresh_kernels, content):
    """A cached file that is not a library, or a library without the kernels (in a new
    process: one that has it loaded keeps its own mapping), is rebuilt and the rebuilt one
    used, not a reason to fall back to the torch path."""
    import _ctypes
    import shutil
    import subprocess
    import sys

    damaged = kernels.library_path()
    damaged.parent.mkdir(parents=True)
    if content == "garbage":
        damaged.write_bytes(b"not a shared library")
    else:
        shutil.copyfile(_ctypes.__file__, damaged)  # a shared library, not the kernels
    before = damaged.read_bytes()
    probe = (
        "from labeller.scan import kernels; print(kernels.build_error(), "
        "kernels._library().block_neurons())"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.split()[0] == "None", done.stderr
    assert int(done.stdout.split()[1]) in (64, 128)
    assert damaged.read_bytes() != before


def test_a_failed_build_leaves_nothing_half_written(fresh_kernels, monkeypatch):
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails
    assert "failed to build kernels.c" in (kernels.build_error() or "")
    assert not kernels.available()
    assert list(fresh_kernels.iterdir()) == []


def test_a_failed_build_names_the_compilers_error_not_its_last_line(
    fresh_kernels, monkeypatch, tmp_path
):
    compiler = tmp_path / "cc"
    compiler.write_text(
        "#!/bin/sh\n"
        "echo 'kernels.c:20:10: fatal error: float.h: No such file or directory' >&2\n"
        "echo '   20 | #include <float.h>' >&2\n"
        "echo 'compilation terminated.' >&2\n"
        "exit 1\n"
    )
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    error = kernels.build_error() or ""
    expected = "kernels.c:20:10: fatal error: float.h: No such file or directory"
    assert error.endswith(f"failed to build kernels.c: {expected}"), error


def test_without_a_compiler_a_scan_says_so_and_keeps_the_same_results(
    fresh_kernels, monkeypatch, tmp_path, tiny_model_dir, tiny_corpus
):
    """No C compiler: the scan takes the torch path (tested equal above) and its report says
    why, once; the catalogue holds every neuron."""
    from builders import run_cli

    from labeller.catalogue import Catalogue

    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    db = tmp_path / "scan.db"
    out = run_cli(
        "scan", "--db", db, "--model", tiny_model_dir, "--dataset", tiny_corpus,
        "--tokens", "300", "--ctx", "16", "--top-k", "4", "--random", "2",
    ).output  # fmt: skip
    assert out.count("statistics ran as torch ops") == 1
    assert "no C compiler" in out and "no-such-cc" in out
    with Catalogue.open(db) as catalogue:
        assert catalogue.db.execute("select count(*) from neurons").fetchone()[0] > 0
