"""A scan sharded over ranks equals the scan of one process: the merges of accumulator states,
a 2-process torchrun scan on CPU (gloo), and interrupt and resume of a sharded scan."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from builders import run_cli, scan_params, sharded_scan_worker

from labeller.catalogue import Catalogue
from labeller.errors import ScanInterrupted, UserError
from labeller.records import Histogram
from labeller.scan.accumulators import (
    AdaptiveHistogram,
    BandSample,
    Moments,
    TopWindows,
    merge_bands,
    merge_histograms,
    merge_moments,
    merge_top,
)
from labeller.scan.runner import run_scan

CPU = torch.device("cpu")


def _stream(batches: int, batch: int, width: int, n: int) -> list[tuple]:
    """Random batches with repeated windows (same hash, same activations) across batches."""
    gen = torch.Generator().manual_seed(3)
    out = []
    for b in range(batches):
        hashes = torch.randint(0, 40, (batch,), generator=gen)
        acts = torch.stack(
            [
                torch.randn(width, n, generator=torch.Generator().manual_seed(int(h)))
                * (1 + int(h) / 10)
                for h in hashes
            ]
        )
        index = torch.arange(b * batch, (b + 1) * batch)
        out.append((acts, hashes, index))
    return out


def _feed(stream, keep, k=5, m=3, bins=8, hist_bins=16):
    n = stream[0][0].shape[2]
    width = stream[0][0].shape[1]
    top, bands = TopWindows(k, n, width, CPU), BandSample(m, bins, n, width, CPU)
    moments, histogram = Moments(n, CPU), AdaptiveHistogram(n, hist_bins, CPU)
    for acts, hashes, index in stream:
        rows = keep(index)
        if not bool(rows.any()):
            continue
        a, h, i = acts[rows], hashes[rows], index[rows]
        priority = h * 7919 % 1009  # a seeded hash of the tokens: equal for equal windows
        window_max = a.amax(dim=1)
        top.update(a, window_max, i, h)
        bands.update(a, window_max, i, priority)
        flat = a.reshape(-1, n)
        moments.update(
            flat, flat.amin(0), flat.amax(0), (torch.empty_like(flat), torch.empty_like(flat))
        )
        histogram.update(
            flat,
            flat.amin(0),
            flat.amax(0),
            (torch.empty_like(flat), torch.empty_like(flat, dtype=torch.int32)),
        )
    return top, bands, moments, histogram


def _coarse(h: Histogram, width: float) -> dict[int, int]:
    """A histogram's counts in bins of `width` (a power-of-two multiple of its own)."""
    own = (h.high - h.low) / len(h.counts) if h.counts else width
    out: dict[int, int] = {}
    for i, c in enumerate(h.counts):
        key = math.floor((h.low + (i + 0.5) * own) / width)
        out[key] = out.get(key, 0) + c
    return {key: c for key, c in out.items() if c}


def same_histogram(a: Histogram, b: Histogram) -> bool:
    width = max((h.high - h.low) / len(h.counts) for h in (a, b))
    return _coarse(a, width) == _coarse(b, width)


def test_merged_shards_equal_one_pass():
    stream = _stream(batches=12, batch=6, width=5, n=9)
    whole = _feed(stream, lambda i: torch.ones_like(i, dtype=torch.bool))
    shards = [_feed(stream, lambda i, r=r: i % 3 == r) for r in range(3)]
    top = merge_top([s[0].state() for s in shards], 5)
    for name in ("values", "window", "hash", "argmax"):
        assert torch.equal(top[name], whole[0].state()[name]), name
    assert torch.allclose(top["acts"], whole[0].state()["acts"])
    bands = merge_bands([s[1].state() for s in shards], 3, 8)
    for name in ("exponent", "priority", "window", "values", "argmax"):
        assert torch.equal(bands[name], whole[1].state()[name]), name
    filled = bands["window"] >= 0
    assert torch.equal(bands["acts"][filled], whole[1].acts[filled])
    moments = merge_moments([s[2].state() for s in shards])
    for name, value in whole[2].state().items():
        assert torch.allclose(moments[name], value, rtol=1e-5, atol=1e-5), name
    merged = AdaptiveHistogram(9, 16, CPU)
    merged.load(merge_histograms([s[3].state() for s in shards], 16))
    assert int(merged.counts.sum()) == int(whole[3].counts.sum())
    for neuron in range(9):
        low, high, counts = merged.histogram(neuron)
        one = Histogram(low=low, high=high, counts=counts)
        low, high, counts = whole[3].histogram(neuron)
        assert same_histogram(one, Histogram(low=low, high=high, counts=counts)), neuron


def assert_same_catalogue(one: Path, two: Path, model: str, layers: list[int], d_mlp: int) -> None:
    """Same top, random and band windows per neuron, statistics within float tolerance, and
    histograms that agree bin for bin at the wider of their two widths."""
    with Catalogue.open(one, read_only=True) as a_cat, Catalogue.open(two, read_only=True) as b_cat:
        for layer in layers:
            for neuron in range(d_mlp):
                a = a_cat.neuron_view(model, layer, neuron)
                b = b_cat.neuron_view(model, layer, neuron)
                kinds = ("top_examples", "random_examples", "quantile_examples", "subset_examples")
                for kind in kinds:
                    xs, ys = getattr(a, kind), getattr(b, kind)
                    assert [(x.document, x.offset, x.rank, x.split, x.band) for x in xs] == [
                        (y.document, y.offset, y.rank, y.split, y.band) for y in ys
                    ], (kind, layer, neuron)
                    for x, y in zip(xs, ys, strict=True):
                        assert x.activations == pytest.approx(y.activations, rel=1e-4, abs=1e-5)
                        assert x.max_activation == pytest.approx(y.max_activation, rel=1e-5)
                sa, sb = a.stats, b.stats
                assert sa.tokens == sb.tokens
                for name in ("max", "min", "mean", "std", "density", "skewness", "kurtosis"):
                    assert getattr(sa, name) == pytest.approx(
                        getattr(sb, name), rel=1e-4, abs=1e-5
                    ), name
                assert same_histogram(sa.histogram, sb.histogram)


TORCHRUN_ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tiny_model, tiny_model_dir, tiny_corpus, tmp_path):
    args = [
        "scan",
        "--model",
        tiny_model_dir,
        "--dataset",
        tiny_corpus,
        "--layers",
        "0,1",
        "--ctx",
        "16",
        "--top-k",
        "6",
        "--random",
        "7",
        "--band-windows",
        "2",
        "--batch-size",
        "5",
        "--device",
        "cpu",
    ]
    run_cli(*args, "--db", tmp_path / "one.db")
    env = {**os.environ, **TORCHRUN_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "labeller"]
        + [str(a) for a in args]
        + ["--db", str(tmp_path / "two.db")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("stored in") == 1  # rank 0 alone reports
    assert "on 2 ranks" in done.stdout
    assert_same_catalogue(
        tmp_path / "one.db", tmp_path / "two.db", str(tiny_model_dir), [0, 1], tiny_model.d_mlp
    )


@pytest.mark.slow
def test_sharded_interrupt_and_resume_equals_one_process(
    tiny_model, tiny_model_dir, tiny_corpus, tmp_path
):
    params = scan_params(tiny_model_dir, tiny_corpus, band_windows=2)
    with Catalogue.open(tmp_path / "one.db", create=True) as catalogue:
        run_scan(catalogue, tiny_model, params, batch_size=4)
    db = tmp_path / "two.db"
    for i, stop_after in enumerate((3, None)):
        torch.multiprocessing.spawn(
            sharded_scan_worker,
            args=(
                2,
                str(tmp_path / f"init{i}"),
                str(db),
                str(tiny_model_dir),
                params.model_dump_json(),
                4,
                stop_after,
            ),
            nprocs=2,
        )
        with Catalogue.open(db) as catalogue:
            (scan,) = catalogue.scans()
            if stop_after:
                assert scan.status == "interrupted" and scan.tokens_seen > 0
                with pytest.raises(UserError, match="checkpointed by 2 process"):
                    run_scan(catalogue, tiny_model, params, batch_size=4)
            else:
                assert scan.status == "complete"
    assert_same_catalogue(
        tmp_path / "one.db", db, str(tiny_model_dir), params.layers, tiny_model.d_mlp
    )


def test_checkpoints_keep_their_world_size(tiny_model, tiny_model_dir, tiny_corpus, tmp_path):
    """One process's checkpoint is stored as it always was (world size 1); several ranks'
    come back apart, one per rank (run_scan refuses a resume with another count)."""
    from labeller.scan.runner import join_checkpoint, split_checkpoint

    params = scan_params(tiny_model_dir, tiny_corpus, tokens=400)
    with Catalogue.open(tmp_path / "c.db", create=True) as catalogue:
        with pytest.raises(ScanInterrupted):
            run_scan(catalogue, tiny_model, params, batch_size=4, stop_requested=lambda: True)
        (scan,) = catalogue.scans()
        blob = catalogue.load_checkpoint(scan.id)
    assert blob is not None
    assert split_checkpoint(blob) == [blob]
    assert split_checkpoint(join_checkpoint([blob, b"x"])) == [blob, b"x"]
