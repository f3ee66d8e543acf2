"""How the catalogue stores a scan: packed float16 examples with exact maxima, checkpoints
beside the file, old catalogues converted by m010, and rescans that keep people's labels."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from builders import scan_params
from sqlite_utils import Database

from labeller.catalogue import Catalogue, rows
from labeller.catalogue.migrations import migrations
from labeller.catalogue.rows import (
    ExampleColumns,
    ExampleRow,
    NeuronBlock,
    NeuronFacts,
    NeuronRow,
    WindowRow,
    encode_activations,
)
from labeller.records import (
    ExampleKind,
    Histogram,
    ModelRecord,
    NeuronStats,
    OutputToken,
    ScanParams,
    ScanStatus,
    Split,
)
from labeller.scan import runner

MODEL = ModelRecord(
    name="m",
    source="test",
    n_layers=1,
    d_mlp=4,
    d_model=8,
    d_vocab=100,
    act_fn="gelu",
    neuron_hook="blocks.{layer}.mlp.hook_post",
)
STATS = NeuronStats(
    max=3.0,
    min=-0.5,
    mean=0.1,
    std=0.4,
    density=0.5,
    skewness=None,
    kurtosis=None,
    tokens=100,
    histogram=Histogram(low=-0.5, high=3.0, counts=[1, 2, 3]),
)


def _windows() -> list[WindowRow]:
    return [
        WindowRow(
            key=k,
            document=f"d{k}",
            offset=8 * k,
            token_ids=[k, 70_000 + k, 3],
            tokens=["a", "é", "c"],
        )
        for k in range(3)
    ]


def _neuron(n: int, values: np.ndarray, *, band: bool = False) -> NeuronRow:
    examples = [
        ExampleRow(
            window_key=i,
            kind=ExampleKind.TOP,
            rank=i,
            split=Split.TRAIN,
            activations=encode_activations(values[i]),
            max_activation=float(values[i].max()),
            max_index=int(values[i].argmax()),
        )
        for i in range(2)
    ]
    examples.append(
        ExampleRow(
            window_key=2,
            kind=ExampleKind.QUANTILE if band else ExampleKind.RANDOM,
            rank=0,
            split=Split.VALID,
            activations=encode_activations(values[2]),
            max_activation=float(values[2].max()),
            max_index=int(values[2].argmax()),
            band=1 if band else None,
            band_low=0.1 if band else None,
            band_high=0.30000000000000004 if band else None,
        )
    )
    return NeuronRow(layer=0, neuron=n, stats=STATS, weights=None, examples=examples)


def _write(catalogue: Catalogue, values: np.ndarray, seed: int = 0) -> int:
    model_id = catalogue.upsert_model(MODEL)
    scan_id = catalogue.create_scan(
        model_id, ScanParams(model="m", dataset="d", layers=[0], seed=seed)
    )
    catalogue.write_scan_results(
        scan_id,
        model_id,
        _windows(),
        [_neuron(0, values), _neuron(1, values * 2, band=True)],
        tokens_seen=9,
        windows_seen=3,
    )
    return scan_id


def test_activations_round_trip_within_float16_and_the_max_exactly(tmp_path: Path):
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((3, 3)) * 7).astype(np.float32)
    values[0, 1] = 1 / 3  # not a float16
    with Catalogue.open(tmp_path / "c.db", create=True) as catalogue:
        _write(catalogue, values)
        view = catalogue.neuron_view("m", 0, 0)
        banded = catalogue.neuron_view("m", 0, 1)
    for i, example in enumerate([*view.top_examples, *view.random_examples]):
        stored = np.asarray(example.activations)
        assert np.allclose(stored, values[i], rtol=2**-11, atol=0)
        assert example.max_activation == float(values[i].max())  # exact, not rounded
        assert example.tokens == ["a", "é", "c"]
        assert (example.document, example.offset) == (f"d{i}", 8 * i)
    assert view.top_examples[0].activations[1] != float(np.float32(1 / 3))  # it was rounded
    (band,) = banded.quantile_examples
    assert (band.band, band.band_low, band.band_high) == (1, 0.1, 0.30000000000000004)
    assert band.max_activation == float((values[2] * 2).max())


def _write_blocks(catalogue: Catalogue, blocks: list[NeuronBlock], seed: int) -> None:
    model_id = catalogue.upsert_model(MODEL)
    scan_id = catalogue.create_scan(
        model_id, ScanParams(model="m", dataset="d", layers=[0], seed=seed)
    )
    catalogue.write_scan_results(
        scan_id, model_id, _windows(), blocks, tokens_seen=9, windows_seen=3
    )


def test_blocks_encoded_beside_the_inserts_are_written_in_order_each_with_its_own_examples(
    tmp_path: Path,
):
    values = np.arange(9, dtype=np.float32).reshape(3, 3)
    blocks = [NeuronBlock.of_rows([_neuron(n, values + 10 * n)]) for n in range(5)]
    with Catalogue.open(tmp_path / "c.db", create=True) as catalogue:
        _write_blocks(catalogue, blocks, seed=0)
        ids = [catalogue.neuron_ref("m", 0, n).id for n in range(5)]
        maxima = [
            [e.max_activation for e in catalogue.neuron_view("m", 0, n).top_examples]
            for n in range(5)
        ]
    assert ids == sorted(ids)  # ids as the blocks came, whatever thread encoded them
    assert maxima == [[2.0 + 10 * n, 5.0 + 10 * n] for n in range(5)]


def test_a_scans_windows_are_inserted_while_its_first_block_is_encoded(tmp_path: Path):
    """The windows go in once, beside the first block's encoding (their ids given before);
    with no neurons at all they go in all the same."""
    import threading

    import labeller.catalogue as catalogue_module

    calls: list[bool] = []
    insert = catalogue_module.Catalogue._insert_windows

    def recording(self, *args, **kwargs):
        calls.append(any(t.name.startswith("labeller-encode") for t in threading.enumerate()))
        return insert(self, *args, **kwargs)

    values = np.arange(9, dtype=np.float32).reshape(3, 3)
    blocks = [NeuronBlock.of_rows([_neuron(n, values + 10 * n)]) for n in range(3)]
    with Catalogue.open(tmp_path / "c.db", create=True) as catalogue:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(catalogue_module.Catalogue, "_insert_windows", recording)
            _write_blocks(catalogue, blocks, seed=0)
            assert calls == [True]
            _write_blocks(catalogue, [], seed=1)
            assert calls == [True, False]
        stored = catalogue.db.execute("select count(*) from windows").fetchone()[0]
        view = catalogue.neuron_view("m", 0, 2)
    assert stored == 6  # both scans' three (the first scan's neurons still hold theirs)
    assert [e.tokens for e in view.top_examples] == [["a", "é", "c"]] * 2
    assert [e.max_activation for e in view.top_examples] == [22.0, 25.0]


def test_windows_sharing_a_key_are_refused_before_any_is_written(tmp_path: Path):
    """Ids are given by key before the rows go in, so two windows with one key would share an
    id: refused, and the write transaction leaves nothing."""
    with Catalogue.open(tmp_path / "c.db", create=True) as catalogue:
        model_id = catalogue.upsert_model(MODEL)
        twice = [_windows()[0], _windows()[0]]
        with pytest.raises(ValueError, match="share a key"), catalogue.write_transaction():
            catalogue.insert_windows(model_id, None, twice)
        assert catalogue.db.execute("select count(*) from windows").fetchone() == (0,)


def test_a_block_that_cannot_be_encoded_leaves_the_catalogue_as_it_was(tmp_path: Path):
    with Catalogue.open(tmp_path / "c.db", create=True) as catalogue:
        _write(catalogue, np.ones((3, 3), dtype=np.float32))
        unknown = _neuron(1, np.full((3, 3), 2.0, dtype=np.float32))
        unknown.examples[0] = unknown.examples[0]._replace(window_key=7)  # no such window
        blocks = [
            NeuronBlock.of_rows([_neuron(0, np.full((3, 3), 2.0, dtype=np.float32))]),
            NeuronBlock.of_rows([unknown]),
        ]
        with pytest.raises(KeyError):
            _write_blocks(catalogue, blocks, seed=1)
        # The first block had been inserted when the second failed: the write is undone whole.
        maxima = [
            [e.max_activation for e in catalogue.neuron_view("m", 0, n).top_examples]
            for n in (0, 1)
        ]
    assert maxima == [[1.0, 1.0], [2.0, 2.0]]  # the first write's (neuron 1 had values * 2)


def test_token_ids_are_exact(tmp_path: Path):
    from labeller.catalogue.browse import example_token_ids

    with Catalogue.open(tmp_path / "c.db", create=True) as catalogue:
        _write(catalogue, np.ones((3, 3), dtype=np.float32))
        found = [example_token_ids(catalogue, "m", 0, 0, "top", rank) for rank in (0, 1)]
        found.append(example_token_ids(catalogue, "m", 0, 0, "random", 0))
    assert found == [[k, 70_000 + k, 3] for k in range(3)]


def test_rescan_replaces_examples_and_keeps_labels(tmp_path: Path):
    with Catalogue.open(tmp_path / "c.db", create=True) as catalogue:
        _write(catalogue, np.ones((3, 3), dtype=np.float32))
        ref = catalogue.neuron_ref("m", 0, 0)
        catalogue.add_explanation(
            ref, "ones", source="human", prompt_version=None, producer_model=None
        )
        second = _write(catalogue, np.full((3, 3), 2.0, dtype=np.float32), seed=1)
        view = catalogue.neuron_view("m", 0, 0)
        assert catalogue.neuron_ref("m", 0, 0).id == ref.id
        assert [e.text for e in view.explanations] == ["ones"]
        assert [h.action for h in catalogue.history(ref)] == ["propose"]
        assert view.scan_id == second
        assert [e.max_activation for e in view.top_examples] == [2.0, 2.0]
        # The first scan's windows went with its last neuron.
        (windows,) = catalogue.db.execute("select count(*) from windows").fetchone()
        assert windows == 3


def _old_catalogue(path: Path) -> None:
    """A catalogue as labeller wrote it before m010: float32 example rows, JSON token ids."""
    db = Database(path)
    migrations.apply(db, stop_before="m010_packed_examples")
    db["models"].insert(
        {
            "id": 1,
            "name": "m",
            "source": "test",
            "n_layers": 1,
            "d_mlp": 4,
            "d_model": 8,
            "d_vocab": 100,
            "act_fn": "gelu",
            "neuron_hook": "h",
            "created_at": "2026",
        }
    )
    params = ScanParams(model="m", dataset="d", layers=[0])
    db["scans"].insert(
        {
            "id": 1,
            "model_id": 1,
            "params": params.model_dump_json(),
            "params_key": params.model_dump_json(),
            "status": "complete",
            "tokens_seen": 9,
            "windows_seen": 3,
            "started_at": "t",
            "updated_at": "t",
        }
    )
    db["windows"].insert(
        {
            "id": 5,
            "scan_id": 1,
            "document": "doc",
            "offset": 0,
            "token_ids": json.dumps([1, 2]),
            "tokens": json.dumps(["x", "y"]),
        }
    )
    neuron = rows.neuron_to_row(NeuronFacts(0, 2, STATS, None), 1, 1)
    db["neurons"].insert({"id": 7, **neuron})
    for rank, values in enumerate([[0.1, 2.5], [1 / 3, -1.0]]):
        db["examples"].insert(
            {
                "neuron_id": 7,
                "window_id": 5,
                "kind": "top",
                "rank": rank,
                "split": "train",
                "activations": encode_activations(np.asarray(values)),
                "max_activation": max(values),
                "max_index": values.index(max(values)),
            }
        )
    db.conn.close()


def test_m010_converts_an_old_catalogue(tmp_path: Path):
    path = tmp_path / "old.db"
    _old_catalogue(path)
    with Catalogue.open(path) as catalogue:  # a write command upgrades it
        view = catalogue.neuron_view("m", 0, 2)
        tables = set(catalogue.db.table_names())
    assert "examples" not in tables and "neuron_examples" in tables
    first, second = view.top_examples
    assert first.activations == pytest.approx([0.1, 2.5], rel=2**-11)
    assert second.activations == pytest.approx([1 / 3, -1.0], rel=2**-11)
    assert (first.max_activation, second.max_activation) == (2.5, 1 / 3)
    assert first.tokens == ["x", "y"]
    with sqlite3.connect(path) as conn:
        (blob,) = conn.execute("select token_ids from windows").fetchone()
    assert rows.unpack_token_ids(blob) == [1, 2]


def _m010_catalogue(path: Path) -> None:
    """A catalogue as m010 left it: uint32 token ids and every window's token strings (JSON).
    Windows 1-2 are scan 1's (2 repeats a token with another string than 1 gives it), window 3
    was imported without a scan; ids from 70,000 need uint32."""
    db = Database(path)
    migrations.apply(db, stop_before="m011_vocabulary")
    db["models"].insert({"id": 1, **rows.model_to_row(MODEL)})
    params = ScanParams(model="m", dataset="d", layers=[0])
    db["scans"].insert(
        {
            "id": 1,
            **rows.scan_to_row(
                1,
                params,
                ScanStatus.COMPLETE,
                tokens_seen=9,
                windows_seen=3,
                started_at="t",
                updated_at="t",
            ),
        }
    )
    windows = {
        1: (1, [5, 70_001, 5], ["a", "é", "a"]),
        2: (1, [5, 6], ["b", "c"]),
        3: (None, [5, 7], ["z", "y"]),
    }
    for window_id, (scan_id, ids, tokens) in windows.items():
        db["windows"].insert(
            {
                "id": window_id,
                "scan_id": scan_id,
                "document": f"doc{window_id}",
                "offset": 0,
                "token_ids": rows.token_ids_to_db(ids),
                "tokens": json.dumps(tokens),
            }
        )
    neuron = rows.neuron_to_row(NeuronFacts(0, 2, STATS, None), 1, 1)
    neuron |= {
        "w_in_w_out_cosine": 0.25,
        "top_positive_tokens": json.dumps([{"token": "a", "weight": 0.5}]),
        "top_negative_tokens": json.dumps([{"token": "é", "weight": -1 / 3}]),
    }
    db["neurons"].insert({"id": 7, **neuron})
    examples = [
        ExampleRow(
            window_key=w,
            kind=ExampleKind.TOP,
            rank=w - 1,
            split=Split.TRAIN,
            activations=encode_activations(np.arange(len(windows[w][1]), dtype=np.float32)),
            max_activation=float(len(windows[w][1]) - 1),
            max_index=len(windows[w][1]) - 1,
        )
        for w in windows
    ]
    blob = rows.encode_examples(examples, {w: w for w in windows})
    db["neuron_examples"].insert({"neuron_id": 7, "data": blob})
    db.conn.close()


def test_m011_stores_token_strings_once_and_reads_back_the_same(tmp_path: Path):
    from labeller.catalogue.browse import top_example_windows

    path = tmp_path / "m010.db"
    _m010_catalogue(path)
    with Catalogue.open(path) as catalogue:  # a write command upgrades it
        view = catalogue.neuron_view("m", 0, 2)
        ids = [w[1] for w in top_example_windows(catalogue, "m", 0, 2)]
        stored = dict(catalogue.db.execute("select id, tokens from windows").fetchall())
        vocabulary = catalogue.db.execute(
            "select model_id, token_id, text from vocabulary order by token_id"
        ).fetchall()
        widths = [
            r[0][0] for r in catalogue.db.execute("select token_ids from windows order by id")
        ]
        (positive,) = catalogue.db.execute("select top_positive_tokens from neurons").fetchone()
    assert [e.tokens for e in view.top_examples] == [["a", "é", "a"], ["b", "c"], ["z", "y"]]
    assert view.weights is not None
    assert view.weights.top_positive_tokens == [OutputToken(token="a", weight=0.5)]
    assert view.weights.top_negative_tokens == [OutputToken(token="é", weight=-1 / 3)]
    assert positive == json.dumps([["a", 0.5]])
    assert ids == [[5, 70_001, 5], [5, 6], [5, 7]]
    assert vocabulary == [(1, 5, "a"), (1, 6, "c"), (1, 70_001, "é")]
    # The window whose token 5 reads otherwise, and the one of no scan, keep their strings.
    assert stored == {1: None, 2: json.dumps(["b", "c"]), 3: json.dumps(["z", "y"])}
    assert widths == [4, 2, 2]


def test_a_scan_stores_token_strings_once_per_model(tmp_path: Path):
    with Catalogue.open(tmp_path / "c.db", create=True) as catalogue:
        _write(catalogue, np.ones((3, 3), dtype=np.float32))
        _write(catalogue, np.ones((3, 3), dtype=np.float32), seed=1)  # a rescan adds none
        tokens = {r[0] for r in catalogue.db.execute("select tokens from windows")}
        vocabulary = catalogue.db.execute(
            "select token_id, text from vocabulary order by token_id"
        ).fetchall()
        view = catalogue.neuron_view("m", 0, 0)
    assert tokens == {None}
    assert vocabulary == [
        (0, "a"),
        (1, "a"),
        (2, "a"),
        (3, "c"),
        *((70_000 + k, "é") for k in range(3)),
    ]
    assert [e.tokens for e in view.top_examples] == [["a", "é", "c"]] * 2


def test_token_ids_pack_to_uint16_when_they_fit():
    assert rows.pack_token_ids([1, 65_535]) == bytes([2]) + np.array([1, 65_535], "<u2").tobytes()
    assert rows.pack_token_ids([65_536]) == bytes([4]) + np.array([65_536], "<u4").tobytes()
    for ids in ([], [0, 65_535], [65_536, 3]):
        assert rows.unpack_token_ids(rows.pack_token_ids(ids)) == ids
    with pytest.raises(rows.UnreadableRecord):
        rows.unpack_token_ids(b"\x03\x00")


def test_a_completed_scan_leaves_few_free_pages(
    tiny_model, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch
):
    monkeypatch.setattr(runner, "CHECKPOINT_EVERY_S", 0.0)  # a checkpoint after every batch
    path = tmp_path / "c.db"
    params = scan_params(tiny_model_dir, tiny_corpus, tokens=2000)
    with Catalogue.open(path, create=True) as catalogue:
        runner.run_scan(catalogue, tiny_model, params, batch_size=4)
        assert not catalogue.checkpoint_path(1).exists()
    with sqlite3.connect(path) as conn:
        pages = conn.execute("pragma page_count").fetchone()[0]
        free = conn.execute("pragma freelist_count").fetchone()[0]
    assert free / pages < 0.05, (free, pages)


def test_no_stored_value_exceeds_the_exact_max(tmp_path: Path):
    """float16 rounds 3.0660367 up to 3.0664062: read back, the value at max_index is the exact
    max and no value exceeds it (band edges, `show`'s colours and exports rely on that)."""
    values = np.array(
        [[3.0660367, 3.0660360, -1.0], [0.5, 0.2, 0.1], [0.3, 0.4, 0.2]], dtype=np.float32
    )
    assert float(np.float16(values[0, 1])) > float(values[0, 0])  # rounding overshoots the max
    with Catalogue.open(tmp_path / "c.db", create=True) as catalogue:
        _write(catalogue, values)
        view = catalogue.neuron_view("m", 0, 0)
    for example in [*view.top_examples, *view.random_examples]:
        assert max(example.activations) == example.activations[example.max_index]
        assert example.activations[example.max_index] == example.max_activation
    top = view.top_examples[0]
    assert top.max_activation == float(values[0, 0])
    assert top.activations[1] == top.max_activation  # clamped, not above it


def test_backup_copies_an_unfinished_scans_checkpoint(tmp_path: Path):
    path, copy = tmp_path / "c.db", tmp_path / "backups" / "copy.db"
    with Catalogue.open(path, create=True) as catalogue:
        model_id = catalogue.upsert_model(MODEL)
        scan_id = catalogue.create_scan(model_id, ScanParams(model="m", dataset="d", layers=[0]))
        catalogue.save_checkpoint(
            scan_id, b"state", tokens_seen=9, windows_seen=3, status=ScanStatus.INTERRUPTED
        )
        copied = catalogue.backup(copy)
    assert copied == [tmp_path / "backups" / f"copy.db.scan-{scan_id}.checkpoint"]
    with Catalogue.open(copy) as restored:
        assert restored.load_checkpoint(scan_id) == b"state"
        (scan,) = restored.scans()
        assert scan.status is ScanStatus.INTERRUPTED


@pytest.mark.parametrize("reader_open", [False, True])
def test_a_scans_bulk_write_leaves_the_catalogue_in_wal_mode(tmp_path: Path, reader_open: bool):
    """The bulk write goes through a rollback journal when it has the file to itself, through
    the WAL when another connection has it open; either way the catalogue ends in WAL mode,
    with the results readable by that other connection."""
    path = tmp_path / "c.db"
    with Catalogue.open(path, create=True) as catalogue:
        catalogue.upsert_model(MODEL)
        reader = sqlite3.connect(path) if reader_open else None
        if reader is not None:
            reader.execute("select count(*) from models").fetchone()
        _write(catalogue, np.ones((3, 3), dtype=np.float32))
        assert catalogue.db.journal_mode == "wal"
        assert not Path(f"{path}-journal").exists()
        if reader is not None:
            assert reader.execute("select count(*) from neurons").fetchone() == (2,)
            reader.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("pragma journal_mode").fetchone() == ("wal",)
        assert conn.execute("select count(*) from neuron_examples").fetchone() == (2,)


def test_a_write_command_restores_wal_mode(tmp_path: Path):
    """A catalogue left in rollback mode (a bulk write could not switch back while a reader
    held it) is put back in WAL mode by the next write command's open."""
    path = tmp_path / "c.db"
    with Catalogue.open(path, create=True) as catalogue:
        _write(catalogue, np.ones((3, 3), dtype=np.float32))
    with sqlite3.connect(path) as conn:
        conn.execute("pragma journal_mode = delete")
    with Catalogue.open(path) as catalogue:
        assert catalogue.db.journal_mode == "wal"
        assert catalogue.neuron_view("m", 0, 0).top_examples


def test_examples_packed_by_m010_still_read():
    """Format 1 (records one after another), as m010 packed them: m011 leaves them so."""
    import zlib

    meta = np.zeros(1, dtype=rows._EXAMPLE)
    meta[0] = (9, 1, 2, 3, 2, 1, -1, 2.5, np.nan, np.nan)
    records = zlib.compress(meta.tobytes(), 1)
    blob = rows._HEADER.pack(1, 1, len(records)) + records
    blob += np.array([0.5, 2.5], dtype="<f2").tobytes()
    (example,) = rows.decode_examples(blob)
    assert (example.window_id, example.kind, example.split, example.rank) == (
        9,
        ExampleKind.RANDOM,
        Split.VALID,
        3,
    )
    assert (example.activations, example.max_activation, example.max_index) == ([0.5, 2.5], 2.5, 1)
    assert (example.band, example.band_low, example.band_high) == (None, None, None)


@pytest.mark.parametrize("maxima", [[2.5, 0.75, 1.0], [1 / 3, 0.75, math.nan]])
def test_packed_examples_round_trip_exactly(maxima: list[float]):
    """Every field but the per-token values comes back exactly: maxima stored as float32 only
    when all of them are one (else float64), band edges shared by index, None kept apart."""
    values = np.array([[0.5, 2.5], [0.75, 0.25], [1.0, -2.0]], dtype=np.float32)
    examples = [
        ExampleRow(4, ExampleKind.TOP, 0, Split.TRAIN, encode_activations(values[0]), maxima[0], 1),
        ExampleRow(
            7,
            ExampleKind.QUANTILE,
            0,
            Split.VALID,
            encode_activations(values[1]),
            maxima[1],
            0,
            band=2,
            band_low=0.5,
            band_high=1 / 3 + 1,
        ),
        ExampleRow(
            5,
            ExampleKind.QUANTILE,
            1,
            Split.TEST,
            encode_activations(values[2]),
            maxima[2],
            0,
            band=2,
            band_low=0.5,
            band_high=1 / 3 + 1,
        ),
    ]
    found = rows.decode_examples(rows.encode_examples(examples, {4: 40, 7: 2**40, 5: 50}))
    assert [(e.window_id, e.kind, e.rank, e.split, e.max_index) for e in found] == [
        (40, ExampleKind.TOP, 0, Split.TRAIN, 1),
        (2**40, ExampleKind.QUANTILE, 0, Split.VALID, 0),
        (50, ExampleKind.QUANTILE, 1, Split.TEST, 0),
    ]
    assert [(e.band, e.band_low, e.band_high) for e in found] == [
        (None, None, None),
        (2, 0.5, 1 / 3 + 1),
        (2, 0.5, 1 / 3 + 1),
    ]
    assert [e.max_activation for e in found][:2] == maxima[:2]
    assert math.isnan(found[2].max_activation) == math.isnan(maxima[2])
    assert rows.decode_examples(rows.encode_examples([], {})) == []


def test_window_tokens_come_from_the_window_or_its_scans_vocabulary(tmp_path: Path):
    """A scan's windows keep their ids alone and read their strings from the model's
    vocabulary; a window of no scan (imported without one) keeps its own strings."""
    with Catalogue.open(tmp_path / "c.db", create=True) as catalogue:
        _write(catalogue, np.ones((3, 3), dtype=np.float32))
        model_id = catalogue.upsert_model(MODEL)
        loose = WindowRow(key=9, document="x", offset=0, token_ids=[3, 4], tokens=["Q", "r"])
        with catalogue.write_transaction():
            (loose_id,) = catalogue.insert_windows(model_id, None, [loose]).values()
        stored = catalogue.db.execute("select tokens from windows where id = ?", [loose_id])
        assert stored.fetchone() == (json.dumps(["Q", "r"]),)
        found = catalogue.window_tokens([1, 2, loose_id, 999])
    assert found == {1: ["a", "é", "c"], 2: ["a", "é", "c"], loose_id: ["Q", "r"]}


def test_a_scans_windows_given_by_ids_take_the_models_strings_once(tmp_path: Path):
    """A scan hands its windows over as ids, with the model's string for each id once: the
    windows store ids alone, unless the vocabulary already holds another string for one of
    their ids; then that window keeps the model's strings, so what is read back is always the
    model's."""
    with Catalogue.open(tmp_path / "c.db", create=True) as catalogue:
        _write(catalogue, np.ones((3, 3), dtype=np.float32))  # stores 0 "a", 70_000 "é", 3 "c"
        model_id = catalogue.upsert_model(MODEL)
        scan_id = catalogue.create_scan(
            model_id, ScanParams(model="m", dataset="d", layers=[0], seed=5)
        )
        windows = [
            WindowRow(key=1, document="p", offset=0, token_ids=[0, 8], tokens=None),
            WindowRow(key=2, document="p", offset=2, token_ids=[70_000, 8], tokens=None),
        ]
        texts = {0: "a", 70_000: "É", 8: "new"}  # 70_000 differs from the stored "é"
        with catalogue.write_transaction():
            ids = catalogue.insert_windows(model_id, scan_id, windows, texts)
        stored = dict(catalogue.db.execute("select id, tokens from windows"))
        vocabulary = dict(
            catalogue.db.execute(
                "select token_id, text from vocabulary where model_id = ?", [model_id]
            )
        )
        found = catalogue.window_tokens(ids.values())
    assert stored[ids[1]] is None
    assert stored[ids[2]] == json.dumps(["É", "new"], ensure_ascii=False)
    assert vocabulary[8] == "new" and vocabulary[70_000] == "é"  # learnt; the stored one kept
    assert found == {ids[1]: ["a", "new"], ids[2]: ["É", "new"]}


def _example(key: int, rank: int, values: list[float], band: int | None = None) -> ExampleRow:
    acts = np.asarray(values, dtype=np.float32)
    edges = (None, None) if band is None else (band * 0.5, band * 0.5 + 0.5)
    kind = ExampleKind.TOP if band is None else ExampleKind.QUANTILE
    return ExampleRow(
        key, kind, rank, Split.TRAIN, encode_activations(acts), float(acts.max()),
        int(acts.argmax()), band, *edges,
    )  # fmt: skip


def test_a_block_of_neurons_packs_as_each_neuron_alone():
    """The scan hands over blocks of neurons as arrays, with empty slots and windows of several
    lengths; each neuron's blob is the one its examples alone would give."""
    neurons = [
        [_example(3, 0, [0.5, 2.0, 1.0]), _example(1, 1, [0.25]), _example(2, 0, [1, 0.75], 1)],
        [],
        [_example(2, 0, [4.0, -1.0]), _example(2, 1, [0.125, 3.5, 2.0, 1.5], 3)],
    ]
    ids = {1: 10, 2: 2**35, 3: 30}
    block = ExampleColumns.of_rows(neurons)
    # An empty slot in the middle of the third neuron's row: it holds no example.
    block.window_key[2] = np.array([2, -1, 2])[: block.window_key.shape[1]]
    shifted = {name: getattr(block, name).copy() for name in ExampleColumns.__dataclass_fields__}
    for name, values in shifted.items():
        if name != "window_key":
            values[2, 2], values[2, 1] = values[2, 1], values[2, 2]
    blobs = rows.encode_example_columns(ExampleColumns(**shifted), rows.WindowIds(ids))
    assert blobs == [rows.encode_examples(examples, ids) for examples in neurons]
    assert [e.window_id for e in rows.decode_examples(blobs[2])] == [2**35, 2**35]


def _banded(key: int, low: float, high: float) -> ExampleRow:
    return ExampleRow(
        key, ExampleKind.QUANTILE, 0, Split.TRAIN, encode_activations(np.ones(2, np.float32)),
        1.0, 0, 0, low, high,
    )  # fmt: skip


def test_band_edges_are_found_for_each_neuron_of_a_block_in_order_of_first_use():
    """The block's edge pairs are found by one sort over all its neurons: each neuron still
    reads back its own pairs, in the order it used them (0.0 and -0.0 one pair, the first kept),
    an example without a band has none, and a neuron with more than 254 pairs is refused."""
    neurons = [
        [_banded(1, 2.0, 4.0), _banded(2, 0.0, 1.0), _example(3, 0, [1.0]), _banded(1, 2.0, 4.0)],
        [_banded(2, -0.0, 1.0), _banded(1, 0.0, 1.0), _banded(3, 0.5, 1.0)],
        [_example(3, 0, [1.0])],
    ]
    ids = {1: 10, 2: 20, 3: 30}
    blobs = rows.encode_example_columns(ExampleColumns.of_rows(neurons), rows.WindowIds(ids))
    edges = [[(e.band_low, e.band_high) for e in rows.decode_examples(b)] for b in blobs]
    assert edges[0] == [(2.0, 4.0), (0.0, 1.0), (None, None), (2.0, 4.0)]
    assert edges[1] == [(-0.0, 1.0), (-0.0, 1.0), (0.5, 1.0)]
    assert math.copysign(1.0, edges[1][1][0]) == -1.0  # the pair as first used
    assert edges[2] == [(None, None)]
    assert blobs == [rows.encode_examples(examples, ids) for examples in neurons]
    many = [[_banded(1, float(i), float(i + 1)) for i in range(254)]]
    (blob,) = rows.encode_example_columns(ExampleColumns.of_rows(many), rows.WindowIds(ids))
    assert rows.decode_examples(blob)[253].band_low == 253.0
    too_many = [many[0] + [_banded(1, 254.0, 255.0)]]
    with pytest.raises(ValueError, match="255 activation bands in one neuron"):
        rows.encode_example_columns(ExampleColumns.of_rows(too_many), rows.WindowIds(ids))


def test_a_window_without_an_id_is_an_error_not_a_wrong_id():
    block = ExampleColumns.of_rows([[_example(5, 0, [1.0])]])
    with pytest.raises(KeyError):
        rows.encode_example_columns(block, rows.WindowIds({4: 40, 6: 60}))


def test_a_layers_output_tokens_read_back_as_each_neurons_own_pairs():
    """The column-wise JSON a scan writes: each neuron's tokens, each weight the same float32
    (large, tiny, subnormal and non-finite ones included), escapes as json.dumps writes them."""
    from labeller.catalogue.rows import output_token_columns_to_db, output_tokens_from_db

    rng = np.random.default_rng(0)
    special = [1e16, 123456789.0, -6.8e15, 1e-4, 9.9e-5, 1e-45, 3.4e38, -0.0, 0.0, 0.1]
    weights = np.concatenate(
        [np.array(special), [math.inf, -math.inf, math.nan], rng.standard_normal(27) * 1e3]
    ).astype(np.float32)
    weights = weights.reshape(4, 10)
    texts = ['"q"', "a\\b\n", "é中😀\u2028", "\ud800\x00", "", " the", "nan", "x", "y", "z"] * 4
    stored = output_token_columns_to_db(texts, weights)
    assert len(stored) == 4
    for neuron, raw in enumerate(stored):
        back = output_tokens_from_db(raw)
        assert [t.token for t in back] == texts[neuron * 10 : (neuron + 1) * 10]
        expected = weights[neuron]
        found = np.array([t.weight for t in back], dtype=np.float32)
        assert np.array_equal(found, expected, equal_nan=True)
        assert np.array_equal(np.signbit(found), np.signbit(expected))
    assert stored[0].startswith('[["\\"q\\"", 1e+16], ["a\\\\b\\n", 1.2345679e+08]')
    assert output_token_columns_to_db([], np.zeros((3, 0), dtype=np.float32)) == ["[]"] * 3


def test_a_histogram_is_stored_as_json_dumps_writes_it_and_reads_back():
    from labeller.catalogue.rows import histogram_to_db
    from labeller.records import Histogram

    cases = [
        (0.0, 0.0, []),
        (-1.5, 2.25, [1, 0, 3]),
        (math.nan, math.inf, [7]),
        (-math.inf, 1e-300, [0] * 64),
        (1e16, 123456789.0, [2**40]),
    ]
    for low, high, counts in cases:
        stored = histogram_to_db(low, high, counts)
        expected = {"low": low, "high": high, "counts": counts}
        assert stored == json.dumps(expected, separators=(",", ":"))
        back = Histogram.model_validate_json(stored)
        assert back.counts == counts
        assert str(back.low) == str(low) and str(back.high) == str(high)


def test_output_tokens_are_stored_as_json_dumps_writes_them_and_read_back():
    """Escapes, non-ASCII, lone surrogates and non-finite weights: the hand-built JSON is
    json.dumps's, character for character, and reads back to the same tokens."""
    from labeller.catalogue.rows import output_tokens_from_db, output_tokens_to_db

    tokens = [
        ('"quoted"', 1.5),
        ("back\\slash\n\ttab", -0.0),
        ("é中😀\u2028", 3.0000001),
        ("\ud800\x00\x7f", math.inf),
        ("", -math.inf),
        (" the", 1e-300),
        ("nan", math.nan),
    ]
    stored = output_tokens_to_db(tokens)
    assert stored == json.dumps([[t, w] for t, w in tokens], ensure_ascii=False)
    back = output_tokens_from_db(stored)
    assert [t.token for t in back] == [t for t, _ in tokens]
    assert [t.weight for t in back][:-1] == [w for _, w in tokens][:-1]
    assert math.isnan(back[-1].weight)


@pytest.mark.parametrize("spread", [1, 10**9], ids=["dense keys: a table", "sparse: a search"])
def test_window_ids_look_up_every_key_and_refuse_one_not_stored(spread: int):
    rng = np.random.default_rng(0)
    for _ in range(50):
        keys = rng.choice(500, int(rng.integers(1, 40)), replace=False) * spread
        stored = dict(zip(keys.tolist(), rng.integers(1, 10**6, keys.size).tolist(), strict=True))
        lookup = rows.WindowIds(stored)
        assert (lookup.table is not None) == (spread == 1)
        asked = rng.choice(np.concatenate([keys, [-1]]), (6, 5))
        expected = [[stored.get(int(k), 0) for k in row] for row in asked]
        assert lookup.ids(asked).tolist() == expected
        for absent in (int(keys.max()) + 1, next(k for k in range(500) if k not in stored)):
            asked[2, 3] = absent
            with pytest.raises(KeyError):
                lookup.ids(asked)
