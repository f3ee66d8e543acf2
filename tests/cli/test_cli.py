"""The CLI as a user drives it: help, scan, show, trace, models, scans."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builders import run_cli as run

from labeller.catalogue import Catalogue
from labeller.cli import cli
from labeller.demo.build import undetected_demo_neurons
from labeller.detect.registry import builtins


@pytest.fixture(scope="module")
def scanned_db(tmp_path_factory, tiny_model_dir, tiny_corpus) -> Path:
    db = tmp_path_factory.mktemp("cli") / "c.db"
    run(
        "scan",
        "--db",
        db,
        "--model",
        tiny_model_dir,
        "--dataset",
        tiny_corpus,
        "--ctx",
        "16",
        "--top-k",
        "8",
        "--random",
        "6",
        "--batch-size",
        "4",
    )
    return db


def test_every_command_has_help_with_an_example():
    for name in cli.commands:
        result = run(name, "--help")
        assert "Example" in result.output, name
        assert f"labeller {name}" in result.output, name


def test_show_json_layout(scanned_db):
    data = json.loads(
        run("show", "--db", scanned_db, "--layer", "0", "--neuron", "3", "--format", "json").output
    )
    assert {
        "model",
        "layer",
        "neuron",
        "stats",
        "weights",
        "top_examples",
        "random_examples",
        "quantile_examples",
        "explanations",
    } <= set(data)
    assert data["explanations"] == []
    assert len(data["top_examples"]) == 8 and len(data["random_examples"]) == 6
    for example in data["top_examples"] + data["random_examples"]:
        assert {"tokens", "activations", "split", "max_index"} <= set(example)
        assert len(example["tokens"]) == len(example["activations"])
        assert example["activations"][example["max_index"]] == max(example["activations"])
    maxes = [e["activations"][e["max_index"]] for e in data["top_examples"]]
    assert maxes == sorted(maxes, reverse=True)
    assert data["stats"]["max"] == pytest.approx(maxes[0])
    assert {"max", "min", "mean", "std", "density", "skewness", "kurtosis", "histogram"} <= set(
        data["stats"]
    )
    assert len(data["weights"]["top_positive_tokens"]) == 10


def test_show_json_quantile_examples(scanned_db):
    data = json.loads(
        run("show", "--db", scanned_db, "--layer", "0", "--neuron", "3", "--format", "json").output
    )
    examples = data["quantile_examples"]
    assert examples and "band" not in data["top_examples"][0]
    top = data["stats"]["max"]
    bands = sorted({e["band"] for e in examples})
    assert bands[0] >= 0 and bands[-1] <= 7
    for example in examples:
        assert set(example) >= {"band", "band_low", "band_high", "rank", "split", "tokens"}
        assert example["band_low"] <= example["max_activation"] <= example["band_high"] <= top
        assert example["band_high"] - example["band_low"] <= top / 4
        assert len(example["tokens"]) == len(example["activations"])
    per_band = [sum(e["band"] == b for e in examples) for b in bands]
    assert max(per_band) <= 4  # the default --band-windows
    assert [e["band"] for e in examples] == sorted(e["band"] for e in examples)


def test_show_text_mode(scanned_db):
    out = run("show", "--db", scanned_db, "--layer", "1", "--neuron", "0").output
    assert "Top examples" in out and "Random examples" in out and "density" in out
    assert "Examples by activation band" in out and "band 0: [0.000, " in out


def test_trace_reproduces_stored_activations(scanned_db, tiny_model, tiny_model_dir):
    data = json.loads(
        run("show", "--db", scanned_db, "--layer", "1", "--neuron", "5", "--format", "json").output
    )
    checked = 0
    for example in data["top_examples"]:
        text = "".join(example["tokens"])
        if tiny_model.token_strings(tiny_model.encode(text)) != example["tokens"]:
            continue  # this window's text re-tokenises differently; trace sees other tokens
        traced = json.loads(
            run(
                "trace",
                "--db",
                scanned_db,
                "--model",
                tiny_model_dir,
                "--layer",
                "1",
                "--neuron",
                "5",
                "--text",
                text,
                "--format",
                "json",
            ).output
        )
        assert traced["tokens"] == example["tokens"]
        np.testing.assert_allclose(
            traced["activations"],
            example["activations"],
            rtol=1e-4 + 2**-11,  # the stored values are float16
            atol=1e-6,
        )
        checked += 1
    assert checked >= 3


def test_trace_uses_the_catalogues_only_model(scanned_db):
    out = run(
        "trace", "--db", scanned_db, "--layer", "0", "--neuron", "1", "--text", "def f(x): return x"
    ).output
    assert "layer 0 neuron 1" in out


def test_models_and_scans(scanned_db, tiny_model_dir):
    models = json.loads(run("models", "--db", scanned_db, "--format", "json").output)
    assert [(m["name"], m["scanned_layers"], m["neurons"]) for m in models] == [
        (str(tiny_model_dir), [0, 1], 96)
    ]
    scans = json.loads(run("scans", "--db", scanned_db, "--format", "json").output)
    assert scans[0]["status"] == "complete" and scans[0]["params"]["top_k"] == 8
    assert scans[0]["tokens_seen"] > 0


def test_db_from_environment(scanned_db, monkeypatch):
    monkeypatch.setenv("LABELLER_DB", str(scanned_db))
    assert "complete" in run("scans").output


def test_hugging_face_model_directory(tiny_hf_dir, tiny_corpus, tmp_path):
    db = tmp_path / "hf.db"
    run(
        "scan",
        "--db",
        db,
        "--model",
        tiny_hf_dir,
        "--dataset",
        tiny_corpus,
        "--layers",
        "1",
        "--tokens",
        "800",
        "--ctx",
        "16",
        "--top-k",
        "4",
        "--random",
        "3",
    )
    data = json.loads(
        run("show", "--db", db, "--layer", "1", "--neuron", "9", "--format", "json").output
    )
    assert data["model"] == str(tiny_hf_dir)
    assert data["stats"]["tokens"] == 800
    checked = 0
    for example in data["top_examples"]:
        text = "".join(example["tokens"])
        traced = json.loads(
            run(
                "trace",
                "--db",
                db,
                "--layer",
                "1",
                "--neuron",
                "9",
                "--text",
                text,
                "--format",
                "json",
            ).output
        )
        if traced["tokens"] != example["tokens"]:
            continue  # this window's text re-tokenises differently
        np.testing.assert_allclose(
            traced["activations"],
            example["activations"],
            rtol=1e-4 + 2**-11,  # the stored values are float16
            atol=1e-5,
        )
        checked += 1
    assert checked >= 1


@pytest.mark.slow
def test_demo_builds_a_labelled_catalogue_offline(tmp_path):
    db = tmp_path / "demo.db"
    out = run("demo", "--db", db, "--tokens", "20000", "--no-tui").output
    assert "Top examples" in out and "labeller annotate --db" in out
    models = json.loads(run("models", "--db", db, "--format", "json").output)
    assert sorted((m["name"], m["neurons"]) for m in models) == [
        ("demo-gelu-1l", 512),
        ("demo-solu-1l", 512),
    ]
    ranked = json.loads(
        run(
            "rank", "--db", db, "--model", "demo-solu-1l", "--limit", "5", "--format", "json"
        ).output
    )
    assert all(r["source"] == "baseline" and r["score"] is not None for r in ranked)
    # the built-in detectors are scored on every neuron, so `rank --by detector:` works at once
    detectors = {d.name for d in builtins()}
    for name in ("demo-gelu-1l", "demo-solu-1l"):
        shown = json.loads(
            run(
                "show",
                "--db",
                db,
                "--model",
                name,
                "--layer",
                "0",
                "--neuron",
                "7",
                "--format",
                "json",
            ).output
        )
        assert {d["name"] for d in shown["detectors"]} == detectors
        by_detector = json.loads(
            run(
                "rank", "--db", db, "--model", name, "--by", "detector:number", "--format", "json"
            ).output
        )
        assert len(by_detector) == 512 and by_detector[0]["score"] is not None
    again = run("demo", "--db", db, "--no-tui")
    assert "building the demo" not in again.stderr

    # interrupted while labelling demo-solu-1l (after its first 256 neurons), so before
    # detecting it: a rerun labels and detects only the rest, to the same labels and scores
    def labels() -> list:
        args = ("rank", "--db", db, "--model", "demo-solu-1l", "--limit", "1000")
        return json.loads(run(*args, "--format", "json").output)

    built = labels()
    with Catalogue.open(db) as catalogue:
        rest = [r.id for r in catalogue.neuron_refs("demo-solu-1l", None, None)][256:]
        marks = ",".join("?" * len(rest))
        for sql in (
            f"delete from detector_scores where neuron_id in ({marks})",
            f"delete from scores where explanation_id in "
            f"(select id from explanations where neuron_id in ({marks}))",
            f"delete from explanations where neuron_id in ({marks})",
        ):
            catalogue.db.execute(sql, rest)
        catalogue.db.conn.commit()
    resumed = run("demo", "--db", db, "--no-tui")
    assert "on 256 neurons of demo-solu-1l" in resumed.stderr
    assert "scanning" not in resumed.stderr and "demo-gelu-1l" not in resumed.stderr
    with Catalogue.open(db, read_only=True) as catalogue:
        assert undetected_demo_neurons(catalogue) == {}
    assert labels() == built and len(built) == 512


def test_a_command_runs_with_the_command_lines_objects_frozen_out_of_the_collector(monkeypatch):
    """What importing the command line made is frozen before the command runs, so the full
    collections that importing torch sets off do not walk it again."""
    import gc

    import labeller.cli as command_line

    frozen_when_run: list[int] = []
    monkeypatch.setattr(command_line, "cli", lambda: frozen_when_run.append(gc.get_freeze_count()))
    gc.unfreeze()
    try:
        command_line.main()
    finally:
        gc.unfreeze()
    assert len(frozen_when_run) == 1
    assert frozen_when_run[0] > 10_000  # the command line's modules, not a handful of objects


def test_progress_never_shows_a_negative_total():
    """An import header may claim -3 neurons; the bar then shows no total, never `1/-3`."""
    from labeller.cli import _progress

    assert _progress(-3, "importing", "neurons").progress.tasks[0].total is None
    assert _progress(5, "importing", "neurons").progress.tasks[0].total == 5


def test_the_trace_help_example_names_a_live_neuron():
    """A newcomer's first trace should show a neuron that fires, not a row of zeros."""
    import re
    import shlex

    help_text = run("trace", "--help").output
    line = next(x.strip() for x in help_text.splitlines() if "labeller trace --model" in x)
    result = run(*shlex.split(line)[1:])
    top = float(re.search(r"max (-?[0-9.]+)", result.output).group(1))
    assert top >= 0.02, result.output  # the demo SoLU neurons' median maximum is about 0.04


def test_search_neurons_ranks_every_scanned_neuron(scanned_db, tiny_model):
    from labeller.model.search import search_neurons

    text = "def value(self): return x"
    data = json.loads(
        run(
            "search-neurons", "--db", scanned_db, text, "--top", "5", "--per-token", "2",
            "--format", "json",
        ).output
    )  # fmt: skip
    expected = search_neurons(tiny_model, tiny_model.encode(text), [0, 1], top=5)
    assert data["layers"] == [0, 1] and data["neurons_searched"] == 96
    assert [(h["layer"], h["neuron"]) for h in data["overall"]] == [
        (h.layer, h.neuron) for h in expected.overall
    ]
    first = data["overall"][0]
    assert first["token"] == data["tokens"][first["position"]]
    assert first["share_of_max"] is not None and first["label"] is None  # scanned, not labelled
    assert len(data["per_token"]) == len(data["tokens"]) and len(data["per_token"][0]) == 2
    relative = json.loads(
        run("search-neurons", "--db", scanned_db, text, "--relative", "--format", "json").output
    )
    shares = [h["share_of_max"] for h in relative["overall"]]
    assert relative["ranked_by"] == "share_of_max" and shares == sorted(shares, reverse=True)
    out = run("search-neurons", "--db", scanned_db, text, "--top", "3").output
    assert "96 neurons in layers 0, 1" in " ".join(out.split())  # the console wraps at 80
    assert run("search-neurons", "--db", scanned_db, "", ok=False).exit_code != 0


@pytest.mark.parametrize("torch_statistics", ["0", "1"])
def test_a_model_giving_nan_activations_stops_the_scan_with_one_line(
    tiny_model_dir, tiny_corpus, tmp_path, torch_statistics
):
    """Before, a NaN activation crashed the compiled kernels and hung the torch path."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    weights = load_file(broken / "model.safetensors")
    weights["blocks.1.mlp.in.weight"][3, 5] = torch.nan
    save_file(weights, broken / "model.safetensors")
    db = tmp_path / "c.db"
    args = ("scan", "--db", db, "--model", broken, "--dataset", tiny_corpus, "--tokens", "400")
    result = run(*args, env={"LABELLER_TORCH_STATISTICS": torch_statistics}, ok=False)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: layer 1 gave NaN or infinite activations on windows 0-")
    assert "--dtype float32" in line
    if db.exists():  # nothing half-written is left behind
        with Catalogue.open(db) as catalogue:
            assert catalogue.scans() == []
