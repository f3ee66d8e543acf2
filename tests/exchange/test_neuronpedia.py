"""`--format neuronpedia`: the dataset folder Neuronpedia's importer reads as its own.

`import_like_neuronpedia` replays their importer (apps/webapp/app/api/admin/import/route.ts and
`importJsonlString` in apps/webapp/lib/db/import.ts) into SQLite with the foreign keys of their
Prisma schema switched on: config rows upserted, then model, source set and source rows created
(Prisma refuses unknown fields), then features, activations and explanations inserted batch by
batch with the columns of each batch's first line, ON CONFLICT DO NOTHING.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from exchange_factory import build_catalogue

from labeller.catalogue import Catalogue
from labeller.errors import UserError
from labeller.exchange import export_neuronpedia
from labeller.exchange.neuronpedia_format import (
    ACTIVATION_FIELDS,
    CONFIG_FILES,
    EXPLANATION_FIELDS,
    MARKER,
    NEURON_FIELDS,
    NEURONPEDIA_BOT_USER,
    model_id,
)

# Their Prisma models (apps/webapp/prisma/schema.prisma): scalar fields, and the required ones.
PRISMA_FIELDS = {
    "Model": (
        {
            "id",
            "displayNameShort",
            "displayName",
            "creatorId",
            "tlensId",
            "openRouterId",
            "dimension",
            "thinking",
            "visibility",
            "defaultSourceSetName",
            "defaultSourceId",
            "defaultGraphSourceSetName",
            "inferenceEnabled",
            "instruct",
            "layers",
            "neuronsPerLayer",
            "createdAt",
            "owner",
            "updatedAt",
            "website",
        },
        {"id", "creatorId", "layers", "neuronsPerLayer", "owner"},
    ),
    "SourceSet": (
        {
            "modelId",
            "name",
            "hasDashboards",
            "allowInferenceSearch",
            "visibility",
            "description",
            "type",
            "creatorName",
            "urls",
            "creatorEmail",
            "creatorId",
            "releaseName",
            "hasGraphs",
            "graphEnabled",
            "similarityMatrixEnabled",
            "defaultOfModelId",
            "defaultGraphModelId",
            "defaultRange",
            "defaultShowBreaks",
            "showDfa",
            "showCorrelated",
            "showHeadAttribution",
            "showUmap",
            "createdAt",
        },
        {"modelId", "name", "description", "creatorName", "creatorId"},
    ),
    "Source": (
        {
            "id",
            "modelId",
            "hasDashboards",
            "inferenceEnabled",
            "saelensConfig",
            "saelensRelease",
            "saelensSaeId",
            "hfRepoId",
            "hfFolderId",
            "visibility",
            "defaultOfModelId",
            "setName",
            "creatorId",
            "hasUmap",
            "hasUmapLogSparsity",
            "hasUmapClusters",
            "num_prompts",
            "num_tokens_in_prompt",
            "dataset",
            "notes",
            "cosSimMatchModelId",
            "cosSimMatchSourceId",
            "createdAt",
        },
        {"id", "modelId", "setName", "creatorId"},
    ),
}

TABLES = """
create table "User" (id text primary key);
create table "ExplanationType" (name text primary key, "displayName" text not null,
  description text not null, featured int, "isAttention" int, "creatorName" text not null,
  "creatorId" text not null references "User"(id), "createdAt" text, "updatedAt" text);
create table "ExplanationModelType" (name text primary key, "displayName" text not null,
  description text not null, featured int, "creatorName" text not null, "createdAt" text,
  "updatedAt" text);
create table "Model" (id text primary key, "creatorId" text not null references "User"(id));
create table "SourceSet" ("modelId" text not null references "Model"(id), name text not null,
  "creatorId" text not null references "User"(id), primary key ("modelId", name));
create table "Source" (id text not null, "modelId" text not null, "setName" text not null,
  "creatorId" text not null references "User"(id), primary key ("modelId", id),
  foreign key ("modelId", "setName") references "SourceSet"("modelId", name));
create table "Neuron" ("modelId" text not null, layer text not null, "index" text not null,
  "creatorId" text references "User"(id), "sourceSetName" text, "maxActApprox" real,
  frac_nonzero real, pos_str text, pos_values text, neg_str text, neg_values text,
  "hasVector" int, primary key ("modelId", layer, "index"),
  foreign key ("modelId", layer) references "Source"("modelId", id),
  foreign key ("modelId", "sourceSetName") references "SourceSet"("modelId", name));
create table "Activation" (id text primary key, "modelId" text not null, layer text not null,
  "index" text not null, "creatorId" text not null references "User"(id), "dataSource" text,
  tokens text, "maxValue" real not null, "minValue" real not null, "values" text,
  "maxValueTokenIndex" int not null, "dfaValues" text, "dfaMaxValue" real,
  "dfaTargetIndex" int, "binContains" real, "binMin" real, "binMax" real,
  foreign key ("modelId", layer, "index") references "Neuron"("modelId", layer, "index"));
create table "Explanation" (id text primary key, "modelId" text not null, layer text not null,
  "index" text not null, "authorId" text not null references "User"(id),
  description text not null, embedding text,
  "typeName" text references "ExplanationType"(name),
  "explanationModelName" text references "ExplanationModelType"(name), notes text,
  umap_x real, umap_y real, umap_cluster int, umap_log_feature_sparsity real,
  foreign key ("modelId", layer, "index") references "Neuron"("modelId", layer, "index"));
"""


def _rows(path: Path) -> list[dict[str, Any]]:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f'pragma table_info("{table}")')]


def _insert(db: sqlite3.Connection, table: str, lines: list[dict[str, Any]]) -> None:
    """importJsonlString: the columns come from the first line, nothing else."""
    first = list(lines[0])
    columns = [c for c in _columns(db, table) if c in first]
    marks = ",".join("?" * len(columns))
    names = ",".join(f'"{c}"' for c in columns)
    for line in lines:
        values = [
            json.dumps(v) if isinstance(v, list) else line.get(c)
            for c in columns
            for v in [line.get(c)]
        ]
        db.execute(
            f'insert into "{table}" ({names}) values ({marks}) on conflict do nothing', values
        )


def _create(db: sqlite3.Connection, table: str, line: dict[str, Any]) -> None:
    """prisma.<table>.create({data: line}): every field must be one of the model's."""
    fields, required = PRISMA_FIELDS[table]
    assert set(line) <= fields, set(line) - fields
    assert required <= set(line), required - set(line)
    columns = [c for c in _columns(db, table) if c in line]
    db.execute(
        f'insert or ignore into "{table}" ({",".join(f"{chr(34)}{c}{chr(34)}" for c in columns)}) '
        f"values ({','.join('?' * len(columns))})",
        [line[c] for c in columns],
    )


def import_like_neuronpedia(root: Path, users: set[str]) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute("pragma foreign_keys = on")
    db.executescript(TABLES)
    db.executemany('insert into "User" values (?)', [(u,) for u in users])
    for name in CONFIG_FILES:
        assert (root / "config" / name).exists()  # their importConfigFromS3 reads all five
    for line in _rows(root / "config" / "explanation_model_type.jsonl"):
        _insert(db, "ExplanationModelType", [line])
    for line in _rows(root / "config" / "explanation_type.jsonl"):
        _insert(db, "ExplanationType", [line])
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "config"):
        for source_dir in sorted(model_dir.iterdir()):
            for name, table in (
                ("model", "Model"),
                ("sourceset", "SourceSet"),
                ("source", "Source"),
            ):
                for line in _rows(source_dir / f"{name}.jsonl"):
                    _create(db, table, line)
            explanations: list[dict[str, Any]] = []
            for folder, table in (
                ("features", "Neuron"),
                ("activations", "Activation"),
                ("explanations", None),
            ):
                for batch in sorted((source_dir / folder).glob("*.jsonl.gz")):
                    lines = _rows(batch)
                    assert lines, f"{batch} is empty"
                    assert all(list(line) == list(lines[0]) for line in lines)
                    if table is None:
                        explanations += lines
                    else:
                        _insert(db, table, lines)
            if explanations:
                _insert(db, "Explanation", explanations)
    return db


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_catalogue(tmp_path_factory.mktemp("np") / "c.db")


def export(db: Path, folder: Path, **kwargs: Any) -> Path:
    arguments: dict[str, Any] = {
        "model": None,
        "layers": None,
        "status": "all",
        "min_score": None,
        "on_progress": None,
        **kwargs,
    }
    with Catalogue.open(db) as catalogue:
        export_neuronpedia(catalogue, folder, **arguments)
    return folder


def test_the_folder_has_one_table_per_file_with_their_columns(db: Path, tmp_path: Path):
    root = export(db, tmp_path / "np")
    source = root / "tiny" / "0"
    assert sorted(p.name for p in root.iterdir()) == ["config", MARKER, "tiny"]
    assert sorted(p.name for p in (root / "tiny").iterdir()) == ["0", "1"]
    assert sorted(p.name for p in source.iterdir()) == [
        "activations",
        "explanations",
        "features",
        "model.jsonl",
        "source.jsonl",
        "sourceset.jsonl",
    ]
    features = _rows(source / "features" / "batch-0.jsonl.gz")
    activations = _rows(source / "activations" / "batch-0.jsonl.gz")
    explanations = _rows(source / "explanations" / "batch-0.jsonl.gz")
    assert all(tuple(r) == NEURON_FIELDS for r in features) and len(features) == 6
    assert all(tuple(r) == ACTIVATION_FIELDS for r in activations)
    assert all(tuple(r) == EXPLANATION_FIELDS for r in explanations)
    banded = [r for r in activations if r["binMin"] is not None]
    assert len(activations) - len(banded) == 6 * (4 + 3) and banded
    for r in banded:  # band windows carry their band's edges
        assert r["binMin"] <= r["maxValue"] <= r["binMax"]
    assert len(explanations) == 3 * 2 + 2  # LLM labels on 0.0-0.2, two human ones on 0.1
    assert not (root / "tiny" / "1" / "explanations").exists()  # never an empty batch file
    (source_row,) = _rows(source / "source.jsonl")
    (set_row,) = _rows(source / "sourceset.jsonl")
    assert (source_row["id"], source_row["setName"], set_row["name"]) == ("0", "neurons", "neurons")
    assert {(r["modelId"], r["layer"]) for r in features + activations + explanations} == {
        ("tiny", "0")
    }
    assert {r["sourceSetName"] for r in features} == {"neurons"}
    human = next(r for r in explanations if r["description"] == "def keyword")
    assert (human["index"], human["authorId"]) == ("1", NEURONPEDIA_BOT_USER)
    assert "by carol" in human["notes"] and "accepted" in human["notes"]
    assert "the neuron's label" in human["notes"]
    assert human["typeName"] == "labeller_human" and human["explanationModelName"] is None
    assert {r["creatorId"] for r in activations} == {NEURONPEDIA_BOT_USER}
    window = activations[0]
    assert window["values"][window["maxValueTokenIndex"]] == window["maxValue"]
    assert window["dataSource"] == "synthetic"


def test_their_importer_takes_every_row_with_foreign_keys_on(db: Path, tmp_path: Path):
    root = export(db, tmp_path / "np", user_id="u-alice")
    imported = import_like_neuronpedia(root, {"u-alice"})
    with Catalogue.open(db) as catalogue:
        bands = sum(
            len(catalogue.neuron_view("tiny", layer, n).quantile_examples)
            for layer in (0, 1)
            for n in range(6)
        )
    assert bands
    count = {
        t: imported.execute(f'select count(*) from "{t}"').fetchone()[0]
        for t in ("Model", "SourceSet", "Source", "Neuron", "Activation", "Explanation")
    }
    assert count == {
        "Model": 1,
        "SourceSet": 1,
        "Source": 2,
        "Neuron": 12,
        "Activation": 12 * 7 + bands,
        "Explanation": 8,
    }
    with Catalogue.open(db) as catalogue:
        ours = {
            (view.layer, view.neuron, e.text)
            for view in (
                catalogue.neuron_view("tiny", layer, n) for layer in (0, 1) for n in range(6)
            )
            for e in view.explanations
        }
    theirs = {
        (int(layer), int(index), text)
        for layer, index, text in imported.execute(
            'select layer, "index", description from "Explanation"'
        )
    }
    assert theirs == ours
    with pytest.raises(sqlite3.IntegrityError):  # an unknown user is refused, as theirs does
        import_like_neuronpedia(root, {"someone-else"})


def test_ids_are_stable_and_unique(db: Path, tmp_path: Path):
    first = export(db, tmp_path / "a")
    second = export(db, tmp_path / "b")
    for table in ("activations", "explanations"):
        a = _rows(first / "tiny" / "0" / table / "batch-0.jsonl.gz")
        b = _rows(second / "tiny" / "0" / table / "batch-0.jsonl.gz")
        assert [r["id"] for r in a] == [r["id"] for r in b]
        assert len({r["id"] for r in a}) == len(a)


def test_status_accepted_keeps_accepted_labels_only(db: Path, tmp_path: Path):
    root = export(db, tmp_path / "np", status="accepted")
    rows = _rows(root / "tiny" / "0" / "explanations" / "batch-0.jsonl.gz")
    assert [r["description"] for r in rows] == ["def keyword"]


def test_model_ids_follow_their_rule():
    assert model_id("openai-community/GPT2.small") == "openai-community-gpt2-small"
    assert model_id("tiny") == "tiny"


def test_written_atomically_and_never_over_other_files(db: Path, tmp_path: Path):
    root = export(db, tmp_path / "np")
    again = export(db, root)  # our own earlier export is replaced whole
    assert (again / MARKER).exists() and not (tmp_path / "np.partial").exists()
    assert not (tmp_path / "np.old").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="other files"):
        export(db, other)
    assert (other / "notes.txt").read_text() == "keep me"
    file = tmp_path / "file.jsonl"
    file.write_text("x")
    with pytest.raises(UserError, match="folder"):
        export(db, file)
