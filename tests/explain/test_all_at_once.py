"""neuron-explainer's all-at-once simulator: the exact prompt, the reference's reading rules, and
`labeller score --simulator-mode all-at-once` end to end against the local server (vLLM-like
and llama.cpp-like), next to the chat mode on the same catalogue."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from builders import llm_config_file, scan_params, scanned_catalogue
from builders import run_cli as run
from fake_openai import FakeOpenAI, neuron_responder

from labeller.catalogue import Catalogue
from labeller.explain.all_at_once import (
    PROBE_PROMPT,
    FewShotExample,
    FewShotRecord,
    WindowUnreadable,
    expected_value,
    load_prompt,
    read_window,
    simulation_prompt,
    simulation_request,
)
from labeller.records import CompletionResponse, PromptToken, TopLogprob

GOLDEN = Path(__file__).parent / "golden"
MODEL = "fake-model"

# neuron-explainer's own golden test (test_simulator.py,
# test_make_explanation_simulation_prompt_if_format): its TEST few-shot set, explanation
# "EXPLANATION", tokens "0" "1" "2".
REFERENCE_TEST_PROMPT = """We're studying neurons in a neural network.
Each neuron looks for some particular thing in a short document.
Look at summary of what the neuron does, and try to predict how it will fire on each token.

The activation format is token<tab>activation, activations go from 0 to 10, "unknown" indicates an unknown activation. Most activations will be 0.


Neuron 1
Explanation of neuron 1 behavior: the main thing this neuron does is find vowels
Activations: 
<start>
a\t10
b\t0
c\t0
<end>
<start>
d\tunknown
e\t10
f\t0
<end>



Neuron 2
Explanation of neuron 2 behavior: the main thing this neuron does is find EXPLANATION<|endofprompt|>
Activations: 
<start>
0\tunknown
1\tunknown
2\tunknown
<end>
"""  # noqa: E501, W291 (the reference's text, "Activations: " with its space)

TEST_EXAMPLES = (
    FewShotExample(
        "vowels",
        (
            FewShotRecord(("a", "b", "c"), (1.0, 0.0, 0.0)),
            FewShotRecord(("d", "e", "f"), (0.0, 1.0, 0.0)),
        ),
        (0, 1),
    ),
)


def test_prompt_layout_is_the_references_byte_for_byte():
    template = replace(load_prompt(), few_shot=TEST_EXAMPLES)
    prompt, start = simulation_prompt(template, " EXPLANATION ", ["0", "1", "2"])
    assert prompt == REFERENCE_TEST_PROMPT
    assert start == prompt.rfind("<start>")


def test_prompt_with_the_original_examples_is_pinned():
    tokens = ["def", " f", "():", "\n", "\t", "return", " 1"]  # raw, as the reference writes them
    request = simulation_request("some-model", "return statements in Python.", tokens)
    assert request.prompt == (GOLDEN / "all_at_once.txt").read_text()
    assert (request.echo, request.max_tokens, request.logprobs) == (True, 0, 15)
    assert load_prompt().version == "all-at-once-v1"
    # The ORIGINAL examples scaled as the reference scales them (max relu over each example's
    # records), "unknown" before each record's first revealed index.
    prompt = request.prompt
    assert "\n<start>\nt\tunknown\n" in prompt and " over\tunknown\n the\t0\n" in prompt
    assert " disappearing\t6\n" in prompt and "earing\t10\n" in prompt  # 2.83, 4.24 of 4.24
    assert "esc\tunknown\naping\tunknown\n the\tunknown\n studio\t0\n" in prompt
    assert " affecting\t3\n" in prompt  # 1.6 / 4.24
    assert " arrest\t10\n" in prompt and "igo\t9\n" in prompt  # 4.46 and 4.37 of 4.46
    assert " together\t3\nness\t7\n" in prompt and " this\t10\n" in prompt  # of 2.84
    assert prompt.endswith(
        "find return statements in Python.<|endofprompt|>\nActivations: \n<start>\n"
        "def\tunknown\n f\tunknown\n():\tunknown\n\n\tunknown\n\t\tunknown\nreturn\tunknown\n"
        " 1\tunknown\n<end>\n"
    )


def tokens_of(*pieces: str | tuple[str, dict[str, float]]) -> CompletionResponse:
    """An echoed prompt: plain pieces, or (piece, {alternative: probability})."""
    out, offset = [], 0
    for i, piece in enumerate(pieces):
        text, alternatives = piece if isinstance(piece, tuple) else (piece, {piece: 1.0})
        tops = [TopLogprob(t, math.log(p)) for t, p in alternatives.items()]
        out.append(PromptToken(text, offset, None if i == 0 else tops))
        offset += len(text)
    return CompletionResponse(
        text="".join(p if isinstance(p, str) else p[0] for p in pieces), tokens=out
    )


def unknown(**weights: float) -> tuple[str, dict[str, float]]:
    return ("unknown", {str(k).lstrip("_"): v for k, v in weights.items()})


def test_expected_values_follow_the_reference():
    # Renormalised over the exact strings "0".."10": " 7" and "unknown" count for nothing.
    assert expected_value([("10", math.log(0.4)), ("5", math.log(0.1)), (" 7", -0.1)]) == (
        pytest.approx(9.0)
    )
    assert expected_value([("unknown", -0.1), (" 3", -0.2)]) is None  # read as 0
    response = tokens_of(
        "<s>",  # a begin-of-sequence token, as vLLM echoes one: offsets are the echo's own
        "Neuron",
        "\t",
        unknown(_3=0.9),  # a few-shot position before the window's <start>: not read
        "\n",
        "<",
        "start",
        ">",
        "\n",
        " return",
        "\t",
        ("unknown", {"10": 0.6, "0": 0.2, "unknown": 0.2}),
        "\n",
        " x",
        "\t",
        ("unknown", {"unknown": 0.9, " 7": 0.1}),
        "\n\n",  # the line break and a newline token in one: the reference's 0
        "\t",
        ("unknown", {"9": 1.0}),
        "\n",
        " spl",
        "it",
        "\t",
        ("unknown", {"4": 1.0}),
        "\n",
        "<",
        "end",
        ">",
        "\n",
    )
    reading = read_window(response, [" return", " x", "\n", " split"])
    assert reading.values == pytest.approx([7.5, 0.0, 0.0, 4.0])
    assert (reading.no_digit, reading.folded) == (1, 1)


def test_a_window_whose_tab_is_merged_cannot_be_read():
    response = tokens_of("<start>", "\n", " a", "\t", unknown(_1=1.0), "\n", " b\t", "unknown")
    with pytest.raises(WindowUnreadable, match="1 tab-then-unknown positions for 2 tokens") as e:
        read_window(response, [" a", " b"])
    assert e.value.raw == "<start>|\n| a|\t|unknown|\n| b\t|unknown"  # kept with the failure


@pytest.fixture()
def db(tmp_path, tiny_model, tiny_model_dir, tiny_corpus) -> Path:
    params = scan_params(tiny_model_dir, tiny_corpus, top_k=8, random=6)
    return scanned_catalogue(tmp_path / "c.db", tiny_model, params)


def score(db: Path, config: Path, *extra: object, ok: bool = True):
    return run(
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
        *extra,
        env={"OPENAI_API_KEY": None},
        ok=ok,
    )


def test_score_all_at_once_and_chat_end_to_end(db, tmp_path):
    with FakeOpenAI(neuron_responder, bos="<s>") as server:
        config = llm_config_file(tmp_path, server.base_url)
        run("explain", "--db", db, "--explainer", MODEL, "--llm-config", config, "--layer", "1",
            "--neurons", "0-3", env={"OPENAI_API_KEY": None})  # fmt: skip
        server.reset()
        result = score(db, config, "--simulator-mode", "all-at-once")
        out = result.output
        assert "score: 4 neurons, 4 labels scored" in out
        assert "null: " in out
        # Newline tokens: joined to the line break before them, 0 as in the reference; said once.
        assert result.stderr.count("as in neuron-explainer, they were predicted 0") == 1
        completions = [r for r in server.requests if "prompt" in r]
        assert completions == server.requests  # all of it on /v1/completions
        assert completions[0]["prompt"] == PROBE_PROMPT  # the probe goes first
        assert all(
            (r["echo"], r["max_tokens"], r["logprobs"]) == (True, 0, 15) for r in completions
        )
        calls = server.calls

        out = score(db, config).output  # the chat mode, same labels, same catalogue
        assert "score: 4 neurons, 4 labels scored" in out
        assert server.calls > calls

        view = json.loads(
            run("show", "--db", db, "--layer", "1", "--neuron", "2", "--format", "json").output
        )
        (explanation,) = view["explanations"]
        primaries = {
            s["simulator"]: s for s in explanation["scores"] if s["method"] == "top_and_random"
        }
        assert set(primaries) == {MODEL, f"{MODEL}:all-at-once"}
        reference = primaries[f"{MODEL}:all-at-once"]
        assert reference["prompt_version"] == "all-at-once-v1"
        assert reference["prediction"] == "expected_value"
        assert primaries[MODEL]["prompt_version"] == "simulator-v1"
        # 0.8 on "10" and 0.2 on "5" for "return" lines, else 0.9 on "0" and 0.1 on "1"; a
        # newline token is joined to the line break before it by the fake's tokenizer: 0.
        seen = set()
        for neuron in range(4):
            view = json.loads(
                run(
                    "show", "--db", db, "--layer", "1", "--neuron", neuron, "--format", "json"
                ).output
            )
            (explanation,) = view["explanations"]
            (primary,) = [
                s
                for s in explanation["scores"]
                if s["method"] == "top_and_random" and s["simulator"] == f"{MODEL}:all-at-once"
            ]
            for window in primary["details"]["windows"]:
                for token, value in zip(window["tokens"], window["simulated"], strict=True):
                    if token.strip("\n") == "":
                        expected = 0.0
                    elif "\n" in token:
                        continue  # read or 0, by how the fake tokenizes it
                    else:
                        expected = 9.0 if "return" in token else 0.1
                    assert value == pytest.approx(expected), (token, value)
                    seen.add(expected)
        assert seen == {0.0, 0.1, 9.0}

        # A rerun pays nothing, probe included: every reply is in the catalogue's cache.
        calls = server.calls
        out = score(db, config, "--simulator-mode", "all-at-once", "--force").output
        assert server.calls == calls and "LLM: 0 calls" in out


def test_a_server_without_prompt_logprobs_stops_the_run_before_spending(db, tmp_path):
    run("explain", "--db", db, "--layer", "1", "--neurons", "0-3")  # baseline labels
    with FakeOpenAI(prompt_logprobs=False) as server:  # llama.cpp's server
        config = llm_config_file(tmp_path, server.base_url)
        out = score(db, config, "--simulator-mode", "all-at-once", ok=False)
        assert out.exit_code == 2
        (line,) = [x for x in out.stderr.splitlines() if x.startswith("error:")]
        assert line.startswith("error: the endpoint returned no logprobs for the prompt")
        assert "llama.cpp" in line and "--simulator-mode chat" in line and "vLLM" in line
        assert [r["prompt"] for r in server.requests] == [PROBE_PROMPT]  # the probe alone
    with Catalogue.open(db) as catalogue:
        for neuron in range(4):
            ref = catalogue.neuron_ref(None, 1, neuron)
            (explanation,) = catalogue.explanations_of(ref.id)
            assert not [s for s in explanation.scores if s.simulator != "baseline"]
            assert catalogue.failures(ref.id) == []


def test_a_server_refusing_echo_stops_the_run_too(db, tmp_path):
    run("explain", "--db", db, "--layer", "1", "--neurons", "0")
    with FakeOpenAI() as server:
        server.fail_always(status=400, error="echo is not supported with logprobs")
        config = llm_config_file(tmp_path, server.base_url)
        out = score(db, config, "--simulator-mode", "all-at-once", "--neurons", "0", ok=False)
        assert out.exit_code == 2
        assert "refused an echo completion" in out.stderr and "--simulator-mode chat" in out.stderr
        assert server.calls == 1


def test_dry_run_shows_the_prompt_and_the_probe(db, tmp_path):
    run("explain", "--db", db, "--layer", "1", "--neurons", "0-3")
    with FakeOpenAI() as server:
        config = llm_config_file(tmp_path, server.base_url)
        out = score(db, config, "--simulator-mode", "all-at-once", "--dry-run").output
        assert "--- prompt (POST /completions, echo, max_tokens 0, logprobs 15)" in out
        assert "<|endofprompt|>\nActivations: \n<start>\n" in out
        assert "1 probe call" in out and "llama.cpp" in out
        assert "score: 4 neurons, " in out
        assert server.calls == 0


def test_modes_refuse_what_they_cannot_do(db, tmp_path):
    config = tmp_path / "unused.toml"
    out = score(db, config, "--simulator-mode", "all-at-once", "--no-logprobs", ok=False)
    assert out.exit_code == 2 and "reads only logprobs" in out.stderr
    out = run("score", "--db", db, "--simulator-mode", "all-at-once", "--layer", "1", ok=False)
    assert out.exit_code == 2 and "needs an LLM model" in out.stderr
