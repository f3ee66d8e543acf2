"""How fast a scan's results go into the catalogue, and how big they are there.

Writes synthetic scan results of real shapes through `Catalogue.write_scan_results` (what
`labeller scan` calls when it finishes): 64-token windows, per neuron 20 top and 20 random
windows and 4 windows in each of 5 to 8 activation bands (the defaults), token ids from a
50,257-token vocabulary, windows shared across neurons as a scan shares them, 10 output tokens
each way. Prints the time of
the write (and, separately, of making the rows alone, which a real scan also pays), the file's
bytes per neuron and its free-page share; `--rescan` then writes the same neurons again over it,
with a label on one neuron, and checks that the label stayed.

    python benchmarks/catalogue_write.py                   # 36,864 neurons (GPT-2 small)
    python benchmarks/catalogue_write.py --neurons 307200  # GPT-2 XL
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import numpy as np

from labeller.catalogue import Catalogue, rows
from labeller.catalogue.rows import (
    KIND_CODES,
    SPLIT_CODES,
    ExampleColumns,
    NeuronBlock,
    NeuronFacts,
    WindowRow,
    neuron_facts,
)
from labeller.records import (
    ExampleKind,
    Histogram,
    ModelRecord,
    NeuronStats,
    OutputToken,
    ScanParams,
    WeightFacts,
    quantile_split,
    random_split,
    top_split,
)

CTX = 64
TOP_K = 20
RANDOM = 20
BAND_WINDOWS = 4
D_MLP = 3072
BLOCK = 1024  # neurons a block, as `labeller/scan/results.py` hands them over
VOCAB = 50_257


def synthetic_windows(count: int, seed: int) -> list[WindowRow]:
    rng = np.random.default_rng(seed)
    vocabulary = [f"tok{i}" for i in range(VOCAB)]
    windows = []
    for key in range(count):
        ids = rng.integers(0, VOCAB, CTX).tolist()
        windows.append(
            WindowRow(
                key=key,
                document=f"doc{key // 16}",
                offset=(key % 16) * CTX,
                token_ids=ids,
                tokens=[vocabulary[i] for i in ids],
            )
        )
    return windows


def synthetic_weights(rng: np.random.Generator) -> WeightFacts:
    """cos(w_in, w_out) and 10 output tokens each way, as `labeller scan` stores them."""
    ids = rng.integers(0, VOCAB, 20).tolist()
    values = np.sort(rng.standard_normal(20))[::-1].tolist()
    tokens = [OutputToken(token=f"tok{i}", weight=v) for i, v in zip(ids, values, strict=True)]
    return WeightFacts(
        w_in_w_out_cosine=float(rng.uniform(-1, 1)),
        top_positive_tokens=tokens[:10],
        top_negative_tokens=tokens[:-11:-1],
    )


def synthetic_neurons(neurons: int, windows: int, seed: int) -> Iterator[NeuronBlock]:
    """Neurons in blocks of 1,024, as the scan hands them over (`labeller/scan/results.py`):
    examples as arrays whose activations come from a bank of random vectors (so nothing
    compresses), 20 top, 20 random and 4 windows in each of 5 to 8 bands, and weight facts
    with 10 output tokens each way."""
    rng = np.random.default_rng(seed)
    bank = rng.standard_normal((4096, CTX)).astype(np.float32)
    histogram = Histogram(low=-1.0, high=4.0, counts=rng.integers(0, 1000, 64).tolist())
    weights = [synthetic_weights(rng) for _ in range(256)]
    random_keys = rng.choice(windows, RANDOM, replace=False)
    slots = TOP_K + RANDOM + 8 * BAND_WINDOWS
    kinds = [ExampleKind.TOP] * TOP_K + [ExampleKind.RANDOM] * RANDOM
    kinds += [ExampleKind.QUANTILE] * (8 * BAND_WINDOWS)
    ranks = [*range(TOP_K), *range(RANDOM), *range(8 * BAND_WINDOWS)]
    splits = [top_split(r) for r in range(TOP_K)] + [random_split(s) for s in range(RANDOM)]
    splits += [quantile_split(at % BAND_WINDOWS) for at in range(8 * BAND_WINDOWS)]
    band = np.array([-1] * (TOP_K + RANDOM) + [i // BAND_WINDOWS for i in range(8 * BAND_WINDOWS)])
    stats = NeuronStats(
        max=4.0,
        min=-1.0,
        mean=0.1,
        std=0.5,
        density=0.3,
        skewness=1.0,
        kurtosis=3.0,
        tokens=1_000_000,
        histogram=histogram,
    )
    stored = [neuron_facts(NeuronFacts(0, 0, stats, w)) for w in weights]
    for start in range(0, neurons, BLOCK):
        size = min(BLOCK, neurons - start)
        pick = rng.integers(0, len(bank), (size, slots))
        acts = bank[pick]
        keys = rng.integers(0, windows, (size, slots))
        keys[:, TOP_K : TOP_K + RANDOM] = random_keys
        bands = rng.integers(5, 9, size)[:, None]
        keys[band[None, :] >= bands] = -1  # the bands a neuron does not have
        width = 4.0 / bands
        shape = (size, slots)
        examples = ExampleColumns(
            window_key=keys,
            kind=np.broadcast_to(np.array([KIND_CODES[k] for k in kinds], np.uint8), shape),
            rank=np.broadcast_to(np.array(ranks), shape),
            split=np.broadcast_to(np.array([SPLIT_CODES[s] for s in splits], np.uint8), shape),
            max_activation=acts.max(axis=2).astype(np.float64),
            max_index=acts.argmax(axis=2),
            band=np.broadcast_to(band, shape),
            band_low=np.where(band >= 0, band * width, np.nan),
            band_high=np.where(band >= 0, (band + 1) * width, np.nan),
            length=np.full(shape, CTX),
            activations=acts,
        )
        keys = [(n // D_MLP, n % D_MLP) for n in range(start, start + size)]
        facts = [stored[n % len(stored)] for n in range(start, start + size)]
        yield NeuronBlock(keys, facts, examples)


def write(path: Path, neurons: int, windows: int, seed: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds of `write_scan_results` (the CPU time is what a quiet machine
    would take, near enough: on a shared one the wall clock includes waiting for a core)."""
    params = ScanParams(model="synthetic", dataset="synthetic", layers=[0])
    with Catalogue.open(path, create=True) as catalogue:
        model_id = catalogue.upsert_model(
            ModelRecord(
                name="synthetic",
                source="benchmark",
                n_layers=max(1, neurons // D_MLP),
                d_mlp=D_MLP,
                d_model=768,
                d_vocab=VOCAB,
                act_fn="gelu",
                neuron_hook="mlp.hook_post",
                created_at="2026-01-01T00:00:00Z",
            )
        )
        scan_id = catalogue.create_scan(model_id, params.model_copy(update={"seed": seed}))
        rows = synthetic_windows(windows, seed)
        start, cpu = time.perf_counter(), time.process_time()
        catalogue.write_scan_results(
            scan_id,
            model_id,
            rows,
            synthetic_neurons(neurons, windows, seed),
            tokens_seen=windows * CTX,
            windows_seen=windows,
        )
        elapsed = time.perf_counter() - start, time.process_time() - cpu
    return elapsed


def file_facts(path: Path) -> tuple[int, float, int]:
    with closing(sqlite3.connect(path)) as conn:
        pages = conn.execute("pragma page_count").fetchone()[0]
        free = conn.execute("pragma freelist_count").fetchone()[0]
        examples = sum(
            len(rows.decode_examples(d))
            for (d,) in conn.execute("select data from neuron_examples")
        )
    return path.stat().st_size, free / max(pages, 1), examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=36_864)
    parser.add_argument("--windows", type=int, default=None, help="distinct windows (default: N/2)")
    parser.add_argument("--rescan", action="store_true", help="write the same neurons again")
    parser.add_argument("--db", type=Path, default=None, help="keep the catalogue at this path")
    args = parser.parse_args()
    windows = args.windows or max(RANDOM, args.neurons // 2)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "bench.db"
        start, cpu = time.perf_counter(), time.process_time()
        examples = sum(
            int((b.examples.window_key >= 0).sum())
            for b in synthetic_neurons(args.neurons, windows, 0)
        )
        making = time.perf_counter() - start, time.process_time() - cpu
        print(
            f"{args.neurons:,} neurons, {windows:,} windows, {examples:,} examples "
            f"(making the rows alone: {making[0]:.1f} s, {making[1]:.1f} s CPU)"
        )
        elapsed = write(path, args.neurons, windows, 0)
        size, free, stored = file_facts(path)
        assert stored == examples, (stored, examples)
        print(
            f"write: {elapsed[0]:.1f} s ({elapsed[1]:.1f} s CPU) including making the rows, "
            f"so about {elapsed[0] - making[0]:.1f} s ({elapsed[1] - making[1]:.1f} s CPU) "
            f"without; {size / args.neurons:,.0f} bytes per neuron ({size / 1e6:,.1f} MB), "
            f"{free:.1%} free pages"
        )
        if args.rescan:
            with Catalogue.open(path) as catalogue:
                ref = catalogue.neuron_ref("synthetic", 0, 1)
                catalogue.add_explanation(
                    ref, "kept", source="human", prompt_version=None, producer_model=None
                )
            examples = sum(
                int((b.examples.window_key >= 0).sum())
                for b in synthetic_neurons(args.neurons, windows, 1)
            )
            elapsed = write(path, args.neurons, windows, 1)
            size, free, stored = file_facts(path)
            assert stored == examples, (stored, examples)
            with Catalogue.open(path, read_only=True) as catalogue:
                view = catalogue.neuron_view("synthetic", 0, 1)
                assert [e.text for e in view.explanations] == ["kept"]
            print(
                f"rescan: {elapsed[0]:.1f} s ({elapsed[1]:.1f} s CPU); "
                f"{size / args.neurons:,.0f} bytes per neuron, {free:.1%} free pages; "
                "the label stayed"
            )


if __name__ == "__main__":
    main()
