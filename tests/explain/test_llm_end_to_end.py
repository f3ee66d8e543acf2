"""explain and score with a model name, end to end against a real local OpenAI-compatible
server: what the prompts contain, what is stored, what is refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from builders import llm_config_file, scan_params, scanned_catalogue
from builders import run_cli as run
from fake_openai import (
    FakeOpenAI,
    Reply,
    is_explainer_request,
    neuron_responder,
    prompt_records,
    simulation_reply,
)

from labeller.catalogue import Catalogue

MODEL = "fake-model"
is_explainer = is_explainer_request
last_records = prompt_records
responder = neuron_responder


@pytest.fixture()
def db(tmp_path, tiny_model, tiny_model_dir, tiny_corpus) -> Path:
    params = scan_params(tiny_model_dir, tiny_corpus, top_k=8, random=6)
    return scanned_catalogue(tmp_path / "c.db", tiny_model, params)


def llm_config(tmp_path: Path, server: FakeOpenAI) -> Path:
    prices = "price_per_million_input = 0.15\nprice_per_million_output = 0.6\n"
    return llm_config_file(tmp_path, server.base_url, prices)


def test_explain_and_score_with_a_model(db, tmp_path):
    with FakeOpenAI(responder) as server:
        config = llm_config(tmp_path, server)
        env = {"OPENAI_API_KEY": None}
        out = run(
            "explain",
            "--db",
            db,
            "--explainer",
            MODEL,
            "--llm-config",
            config,
            "--layer",
            "1",
            "--neurons",
            "0-3",
            "--candidates",
            "2",
            env=env,
        ).output
        assert "explain: 4 neurons, 4 labels written" in out  # 2 samples, same text: one label
        assert re.search(r"LLM: 8 calls, .* cost \$0\.\d+", out)
        out = run(
            "score",
            "--db",
            db,
            "--simulator",
            MODEL,
            "--llm-config",
            config,
            "--layer",
            "1",
            "--neurons",
            "0-3",
            env=env,
        ).output
        assert "score: 4 neurons, 4 labels scored" in out
        assert re.search(r"LLM: \d+ calls, .* cost \$", out)
        calls = server.calls

        view = json.loads(
            run("show", "--db", db, "--layer", "1", "--neuron", "2", "--format", "json").output
        )
        (explanation,) = view["explanations"]
        assert re.fullmatch(
            r'the "return" keyword in Python code \(variant \w{6}\)\.', explanation["text"]
        )
        assert explanation["source"] == MODEL and explanation["best"] is True
        assert explanation["prompt_version"] == "explainer-v1"
        scores = {s["method"]: s for s in explanation["scores"]}
        assert set(scores) == {"top_and_random", "top_only", "random_only"}
        primary = scores["top_and_random"]
        assert primary["split"] == "valid" and primary["simulator"] == MODEL
        assert {s["prediction"] for s in scores.values()} == {"expected_value"}
        windows = primary["details"]["windows"]
        valid = [e for e in view["top_examples"] + view["random_examples"] if e["split"] == "valid"]
        assert [w["true"] for w in windows] == [e["activations"] for e in valid]
        for window in windows:  # expected value 0.8 * v + 0.2 * 5 from the logprobs
            assert all(s in (1.0, 9.0) for s in window["simulated"])

        # What the prompts held: train windows to the explainer, valid ones to the simulator.
        train = [
            [t.replace("\n", "⏎").replace("\t", "⇥") for t in e["tokens"]]
            for e in view["top_examples"]
            if e["split"] == "train"
        ]
        held_out = [[t.replace("\n", "⏎").replace("\t", "⇥") for t in e["tokens"]] for e in valid]
        neuron_requests = [
            r for r in server.requests if any(block in train for block in last_records(r))
        ]
        explainer_windows = [b for r in neuron_requests if is_explainer(r) for b in last_records(r)]
        assert sorted(map(tuple, explainer_windows)) == sorted(map(tuple, train * 2))
        simulated = [b for r in server.requests if not is_explainer(r) for b in last_records(r)]
        assert all(window in simulated for window in held_out)
        assert not any(window in train for window in simulated)

        # A rerun pays nothing: everything comes from the catalogue's response cache.
        out = run(
            "score",
            "--db",
            db,
            "--simulator",
            MODEL,
            "--llm-config",
            config,
            "--layer",
            "1",
            "--neurons",
            "0-3",
            "--force",
            env=env,
        ).output
        assert server.calls == calls
        assert "LLM: 0 calls" in out


def test_misaligned_simulations_and_bad_explanations_are_recorded_not_stored(db, tmp_path):
    def broken(request: dict) -> Reply:
        if is_explainer(request):
            return Reply(content="<start>\nthe\t3\n<end>")  # repeats records: unusable
        (tokens,) = last_records(request)
        return simulation_reply(tokens, drop_last=True)

    with FakeOpenAI(broken) as server:
        config = llm_config(tmp_path, server)
        out = run(
            "explain",
            "--db",
            db,
            "--explainer",
            MODEL,
            "--llm-config",
            config,
            "--layer",
            "0",
            "--neurons",
            "1",
            ok=False,
        )
        assert out.exit_code == 1  # a run in which anything failed says so
        assert "0 labels written, 1 failed: 1 unparseable reply" in out.stdout
        assert server.calls == 3  # retried with fresh samples, then given up
        run("explain", "--db", db, "--layer", "0", "--neurons", "1")  # the baseline's label
        out = run(
            "score",
            "--db",
            db,
            "--simulator",
            MODEL,
            "--llm-config",
            config,
            "--layer",
            "0",
            "--neurons",
            "1",
            ok=False,
        )
        assert out.exit_code == 1
        assert "0 labels scored, 1 failed: 1 unparseable reply" in out.stdout
    with Catalogue.open(db) as catalogue:
        ref = catalogue.neuron_ref(None, 0, 1)
        (explanation,) = catalogue.explanations_of(ref.id)
        assert explanation.source == "baseline"
        assert [s for s in explanation.scores if s.simulator == MODEL] == []
        failures = catalogue.failures(ref.id)
        stages = sorted({f["stage"] for f in failures})
        assert stages == ["explain", "simulate"]
        assert any("token lines" in f["error"] for f in failures if f["stage"] == "simulate")
        assert any("<start>" in f["raw"] for f in failures if f["stage"] == "explain")


def test_dry_run_prints_a_prompt_and_counts_without_calling(db, tmp_path):
    with FakeOpenAI(responder) as server:
        config = llm_config(tmp_path, server)
        out = run(
            "explain",
            "--db",
            db,
            "--explainer",
            MODEL,
            "--llm-config",
            config,
            "--layer",
            "1",
            "--candidates",
            "3",
            "--dry-run",
        ).output
        assert "--- system" in out and "Explanation of neuron 3 behavior" in out
        assert "explain: 48 neurons, 144 calls, about" in out
        assert server.calls == 0
        # 144 calls, each with max_tokens 100; no rate limit configured, so no time.
        assert "estimate: 144 calls, " in out and "at most 14,400 reply" in out
        assert "time not estimated" in out and re.search(r", cost \$0\.\d\d\n", out)


def test_dry_run_prints_the_duration_the_rate_limits_allow(db, tmp_path):
    limits = "max_tokens_per_minute = 6000\nmax_requests_per_minute = 100000\n"
    config = llm_config_file(tmp_path, "http://127.0.0.1:9/v1", limits)
    out = run(
        "explain", "--db", db, "--explainer", MODEL, "--llm-config", config, "--dry-run"
    ).output
    (line,) = [x for x in out.splitlines() if x.startswith("estimate: ")]
    assert re.fullmatch(
        r"estimate: 96 calls, [\d,.]+( M)? tokens \(.* prompt \+ at most 9,600 reply\), "
        r"about \d+ min at 6,000 tokens/min",
        line,
    ), line


def test_baseline_runs_read_no_llm_settings(db, tmp_path):
    missing = tmp_path / "missing.toml"
    out = run("score", "--db", db, "--layer", "1", "--dry-run", "--llm-config", missing).stdout
    assert out == "score with the offline baseline: 48 neurons, no LLM calls\n"
    out = run("explain", "--db", db, "--layer", "1", "--neurons", "0", "--llm-config", missing)
    assert out.stdout == "explain: 1 neurons, 1 labels written\n"  # and no LLM summary line


def test_logprob_free_endpoint_falls_back_to_written_values(db, tmp_path):
    with FakeOpenAI(responder, logprobs=False) as server:
        config = llm_config(tmp_path, server)
        run("explain", "--db", db, "--layer", "1", "--neurons", "5")
        scored = run(
            "score",
            "--db",
            db,
            "--simulator",
            MODEL,
            "--llm-config",
            config,
            "--layer",
            "1",
            "--neurons",
            "5",
        )
    assert scored.stderr.count("gives no logprobs") == 1  # said once, not per window
    assert "prediction: integer" in scored.stderr
    with Catalogue.open(db) as catalogue:
        (explanation,) = catalogue.explanations_of(catalogue.neuron_ref(None, 1, 5).id)
        assert {s.prediction for s in explanation.scores} == {"integer"}
        (primary,) = [s for s in explanation.scores if s.method == "top_and_random"]
        for window in primary.details["windows"]:
            assert set(window["simulated"]) <= {0.0, 10.0}
