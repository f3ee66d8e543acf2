"""The `json` format: round trips, schema, streaming, and refusing files that are not exports."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path

import jsonschema
import pytest
from exchange_factory import build_catalogue
from exchange_helpers import copy_db, export_file, export_text, state, without_exported_at

from labeller.catalogue import Catalogue
from labeller.catalogue import exchange as store
from labeller.errors import UserError
from labeller.exchange import count_export, export_catalogue, export_header, import_catalogue
from labeller.exchange.importer import import_catalogue as import_in_batches
from labeller.exchange.json_format import FORMAT_VERSION, export_schema

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "labeller-export.schema.json"


@pytest.fixture(scope="module")
def base_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two models; the first labelled (LLM labels with scores, accepted human label, an undo)."""
    path = tmp_path_factory.mktemp("base") / "base.db"
    build_catalogue(path, model="tiny")
    build_catalogue(path, model="other", layers=1, neurons=3, seed=5, labelled=False)
    return path


@pytest.fixture()
def source(base_db: Path, tmp_path: Path) -> Path:
    return copy_db(base_db, tmp_path / "source.db")


def test_export_import_export_is_identical_apart_from_exported_at(source: Path, tmp_path: Path):
    first = export_file(source, tmp_path / "first.json")
    target = tmp_path / "target.db"
    with Catalogue.open(target, create=True) as catalogue:
        report = import_catalogue(catalogue, first)
    assert report.neurons_added == 2 * 6 + 3
    assert report.models_added == 2 and report.scans_added == 2
    assert report.conflicts == []
    second = export_text(target)
    assert without_exported_at(second) == without_exported_at(first.read_text())
    ours, theirs = state(target)["counts"], state(source)["counts"]
    # Windows no example uses carry nothing to export; every other table matches row for row.
    assert {**ours, "windows": 0} == {**theirs, "windows": 0}


def test_round_trip_keeps_undo_links_and_shared_windows(source: Path, tmp_path: Path):
    first = export_file(source, tmp_path / "first.json")
    target = tmp_path / "target.db"
    with Catalogue.open(target, create=True) as catalogue:
        import_catalogue(catalogue, first)
        ref = catalogue.neuron_ref("tiny", 0, 1)
        history = store.our_history(catalogue, ref.id)
        (undo,) = [h for h in history if h.entry.action == "undo"]
        undone = next(h.entry for h in history if h.entry.id == undo.undoes)
        assert (undone.action, undone.after.text) == ("write", "function headers")
        # The stored layout is the catalogue's own: `labeller history` reads it back.
        assert [h.action for h in catalogue.history(ref)][-1] == "undo"
    with Catalogue.open(source) as catalogue:
        used = len(_windows_kept(catalogue))
    assert state(target)["counts"]["windows"] == used  # shared windows not duplicated


def test_import_twice_changes_nothing(source: Path, tmp_path: Path):
    export = export_file(source, tmp_path / "export.json")
    target = tmp_path / "target.db"
    with Catalogue.open(target, create=True) as catalogue:
        import_catalogue(catalogue, export)
    before = state(target)
    with Catalogue.open(target) as catalogue:
        report = import_catalogue(catalogue, export)
    assert state(target) == before
    assert report.model_dump(exclude={"neurons_unchanged"}) == {
        "models_added": 0,
        "scans_added": 0,
        "neurons_added": 0,
        "neurons_updated": 0,
        "kept_our_evidence": 0,
        "explanations_added": 0,
        "statuses_changed": 0,
        "scores_added": 0,
        "detector_scores_added": 0,
        "history_added": 0,
        "conflicts": [],
        "warnings": [],
    }
    assert report.neurons_unchanged == 15
    # Importing a catalogue's own export into itself is a no-op too.
    with Catalogue.open(source) as catalogue:
        own_before = state(source)
        import_catalogue(catalogue, export)
    assert state(source) == own_before


def test_interrupted_import_is_consistent_and_a_rerun_completes_it(source: Path, tmp_path: Path):
    export = export_file(source, tmp_path / "export.json")
    target = tmp_path / "target.db"

    def stop_at_seven(done: int) -> None:
        if done == 7:
            raise KeyboardInterrupt

    with Catalogue.open(target, create=True) as catalogue:
        with pytest.raises(KeyboardInterrupt):
            import_in_batches(catalogue, export, on_progress=stop_at_seven, batch_size=5)
        # The batch holding neuron 7 rolled back whole; the first batch is complete.
        assert store.table_counts(catalogue)["neurons"] == 5
        _windows_kept(catalogue)  # every example's window is there (else UnreadableRecord)
        import_catalogue(catalogue, export)
    assert without_exported_at(export_text(target)) == without_exported_at(export.read_text())


def _windows_kept(catalogue: Catalogue) -> set[int]:
    """The ids of the windows the catalogue's neurons keep as examples, read through the
    catalogue (which refuses an example whose window is missing)."""
    return {
        example.window_id
        for (neuron_id,) in catalogue.db.execute("select id from neurons").fetchall()
        for example, _ in catalogue.packed_examples(int(neuron_id), "id")
    }


def test_committed_schema_is_current():
    committed = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert committed == export_schema(), (
        "schemas/labeller-export.schema.json is stale; regenerate it with "
        "`python -m labeller.exchange.json_format > schemas/labeller-export.schema.json`"
    )


def test_exports_validate_against_the_schema(source: Path):
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))
    for kwargs in ({}, {"status": "accepted"}, {"layers": [1], "model": "tiny"}):
        document = json.loads(export_text(source, **kwargs))
        validator.validate(document)
        assert document["neuron_count"] == len(document["neurons"])


def test_export_has_no_database_ids(source: Path):
    document = json.loads(export_text(source))

    def keys(value: object) -> set[str]:
        if isinstance(value, dict):
            return set(value) | {k for v in value.values() for k in keys(v)}
        if isinstance(value, list):
            return {k for v in value for k in keys(v)}
        return set()

    found = keys(document)
    assert not found & {"id", "scan_id", "explanation_id", "neuron_id", "window_id"}
    neuron = next(
        n for n in document["neurons"] if (n["model"], n["layer"], n["neuron"]) == ("tiny", 0, 1)
    )
    seqs = sorted(h["seq"] for e in neuron["explanations"] for h in e["history"])
    assert seqs == list(range(6))  # 2 LLM proposals, write + accept, write + undo
    undo = next(h for e in neuron["explanations"] for h in e["history"] if h["action"] == "undo")
    assert undo["undoes"] == 4
    assert set(neuron["top_examples"][0]) == {
        "tokens",
        "token_ids",
        "activations",
        "split",
        "max_index",
        "max_activation",
        "document",
        "offset",
        "kind",
        "rank",
        "band",
        "band_low",
        "band_high",
        "subset",
    }
    assert neuron["top_examples"][0]["band"] is None
    quantile = neuron["quantile_examples"]
    assert quantile and all(q["kind"] == "quantile" and q["band"] is not None for q in quantile)


class Sink(io.TextIOBase):
    """A destination that counts lines and keeps nothing."""

    def __init__(self) -> None:
        self.lines = 0

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        return len(text)


def test_streaming_writes_each_neuron_before_reading_the_next(tmp_path: Path):
    path = build_catalogue(tmp_path / "big.db", layers=2, neurons=150, labelled=False)

    sink = Sink()
    seen: list[tuple[int, int]] = []
    with Catalogue.open(path) as catalogue:
        written = export_catalogue(
            catalogue,
            sink,
            fmt="json",
            model=None,
            layers=None,
            status="all",
            min_score=None,
            on_progress=lambda n: seen.append((n, sink.lines)),
        )
    assert written == 300 == len(seen)
    # Neuron n's line is already out (header line + n - 1 finished lines) when n is reported.
    assert all(lines >= n for n, lines in seen)
    assert [n for n, _ in seen] == list(range(1, 301))


def test_export_memory_does_not_grow_with_the_catalogue(tmp_path: Path):
    small = build_catalogue(tmp_path / "small.db", layers=1, neurons=30, labelled=False)
    large = build_catalogue(tmp_path / "large.db", layers=2, neurons=150, labelled=False)

    def peak(path: Path) -> int:
        with Catalogue.open(path) as catalogue:
            tracemalloc.start()
            export_catalogue(
                catalogue,
                Sink(),
                fmt="json",
                model=None,
                layers=None,
                status="all",
                min_score=None,
                on_progress=None,
            )
            _, top = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        return top

    # Ten times the neurons (and ten times the output, which the sink drops): the peak stays
    # that of the few objects one neuron needs.
    peak(small)  # first use builds caches (pydantic serialisers, statements): not per neuron
    small_peak, large_peak = peak(small), peak(large)
    assert large_peak < small_peak * 2, (small_peak, large_peak)


NEWER = FORMAT_VERSION + 1


@pytest.mark.parametrize(
    "content",
    [
        "this is not json\n",
        '{"id": "x", "modelId": "tiny", "description": "a neuronpedia line"}\n',
        f'{{"format": "labeller-export", "format_version": {NEWER}, "neurons": [\n]}}\n',
        '{"format": "labeller-export", "format_version": "one"}\n',
        b"\x89PNG\r\n\x1a\n\x00\x00",
        "",
    ],
    ids=["text", "neuronpedia", "newer", "bad-version", "binary", "empty"],
)
def test_a_file_that_is_not_an_export_is_refused_in_one_line(tmp_path: Path, content):
    path = tmp_path / "bad.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    target = tmp_path / "target.db"
    with Catalogue.open(target, create=True) as catalogue:
        with pytest.raises(UserError) as caught:
            import_catalogue(catalogue, path)
        assert store.table_counts(catalogue)["models"] == 0
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    if f'format_version": {NEWER}' in str(content):
        assert "newer" in message and "upgrade labeller" in message


def test_a_cut_off_or_corrupted_export_writes_nothing(source: Path, tmp_path: Path):
    text = export_text(source)
    lines = text.splitlines(keepends=True)
    cut = tmp_path / "cut.json"
    cut.write_text("".join(lines[:-3]))
    corrupt = tmp_path / "corrupt.json"
    broken = lines[-3].replace('"layer": ', '"layer": "x", "q": ', 1)
    corrupt.write_text("".join(lines[:-3]) + broken + "".join(lines[-2:]))
    missing = tmp_path / "missing.json"
    target = tmp_path / "target.db"
    with Catalogue.open(target, create=True) as catalogue:
        for path in (cut, corrupt, missing):
            with pytest.raises(UserError) as caught:
                import_catalogue(catalogue, path)
            assert "\n" not in str(caught.value)
        assert store.table_counts(catalogue)["neurons"] == 0


@pytest.mark.parametrize(
    ("field", "value", "unknown"),
    [("status", "accepted", "approved"), ("action", "undo", "erase")],
)
def test_an_unknown_label_status_or_history_action_is_refused_before_writing(
    source: Path, tmp_path: Path, field: str, value: str, unknown: str
):
    text = export_text(source)
    assert f'"{field}": "{value}"' in text
    bad = tmp_path / "bad.json"
    bad.write_text(text.replace(f'"{field}": "{value}"', f'"{field}": "{unknown}"', 1))
    with Catalogue.open(tmp_path / "target.db", create=True) as catalogue:
        with pytest.raises(UserError, match=rf"explanations\.\d+\.(history\.\d+\.)?{field}"):
            import_catalogue(catalogue, bad)
        assert store.table_counts(catalogue)["neurons"] == 0


def test_a_reformatted_export_still_imports(source: Path, tmp_path: Path):
    text = export_text(source)
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(json.loads(text), indent=2))
    target = tmp_path / "target.db"
    with Catalogue.open(target, create=True) as catalogue:
        import_catalogue(catalogue, pretty)
    assert without_exported_at(export_text(target)) == without_exported_at(text)


def test_header_and_count_give_progress_totals(source: Path, tmp_path: Path):
    export = export_file(source, tmp_path / "export.json", layers=[0])
    header = export_header(export)
    with Catalogue.open(source) as catalogue:
        assert count_export(catalogue, layers=[0]) == header.neuron_count == 6 + 3
    assert [m.name for m in header.models] == ["other", "tiny"]


def test_an_empty_selection_exports_and_imports(source: Path, tmp_path: Path):
    export = export_file(source, tmp_path / "empty.json", status="needs_review")
    document = json.loads(export.read_text())
    assert (document["neurons"], document["models"], document["scans"]) == ([], [], [])
    target = tmp_path / "target.db"
    with Catalogue.open(target, create=True) as catalogue:
        report = import_catalogue(catalogue, export)
    assert report.neurons_added == 0 and export_header(export).neuron_count == 0


def test_a_version_1_export_imports_as_scanned_without_bands(source: Path, tmp_path: Path):
    """Files written before activation bands: no quantile fields, scan params without
    band_windows (so the scan kept none), scores with no `windows` (top and random)."""
    document = json.loads(export_text(source))
    document["format_version"] = 1
    for scan in document["scans"]:
        del scan["params"]["band_windows"]
    for neuron in document["neurons"]:
        del neuron["quantile_examples"]
        for example in (*neuron["top_examples"], *neuron["random_examples"]):
            for name in ("band", "band_low", "band_high"):
                del example[name]
        for explanation in neuron["explanations"]:
            explanation["scores"] = [
                {k: v for k, v in s.items() if k != "windows"}
                for s in explanation["scores"]
                if s["windows"] == "top_and_random"
            ]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(document))
    target = tmp_path / "target.db"
    with Catalogue.open(target, create=True) as catalogue:
        import_catalogue(catalogue, old)
        assert {s.params.band_windows for s in catalogue.scans()} == {0}
        view = catalogue.neuron_view("tiny", 0, 0)
        assert view.quantile_examples == []
        assert {s.windows for e in view.explanations for s in e.scores} == {"top_and_random"}


def test_round_trip_keeps_the_label_an_edit_came_from(source: Path, tmp_path: Path):
    from labeller.catalogue import labels

    with Catalogue.open(source) as catalogue:
        ref = catalogue.neuron_ref("tiny", 0, 2)
        origin = catalogue.explanations_of(ref.id)[0]
        labels.write_label(
            catalogue,
            ref,
            origin.text + ", edited",
            annotator="dave",
            expected_version=None,
            edited_from=origin.id,
        )
    first = export_file(source, tmp_path / "first.json")
    target = tmp_path / "target.db"
    with Catalogue.open(target, create=True) as catalogue:
        import_catalogue(catalogue, first)
        ref = catalogue.neuron_ref("tiny", 0, 2)
        edit = catalogue.history(ref)[-1]
        (parent,) = [e for e in catalogue.explanations_of(ref.id) if e.id == edit.edited_from]
        assert (edit.after.text, parent.text) == (origin.text + ", edited", origin.text)
    assert without_exported_at(export_text(target)) == without_exported_at(first.read_text())
