"""Explainers and simulators by name: what each records, what a dry run counts, when the LLM
client opens, and how LLM failures and the logprob fallback surface (against a real local
OpenAI-compatible server)."""

from __future__ import annotations

import pytest
from fake_openai import (
    FakeOpenAI,
    Reply,
    neuron_responder,
    prompt_records,
    simulation_reply,
)

from labeller.explain.client import Cause, DryRun, LLMFatal
from labeller.explain.explainer import explainer_request
from labeller.explain.resolve import BASELINE, LLMUnavailable, Resolver
from labeller.explain.simulator import SimulationFailed, simulator_request
from labeller.llm.config import LLMConfig
from labeller.records import PredictionKind

WINDOWS = [(["def", " f", "():"], [3.0, 0.0, 1.0]), ([" return", " x"], [2.0, 0.5])]
TOKENS = [tokens for tokens, _ in WINDOWS]


def unread() -> LLMConfig:
    raise AssertionError("the LLM settings were read")


def served(server: FakeOpenAI) -> Resolver:
    return Resolver(lambda: LLMConfig(base_url=server.base_url, max_retries=0))


def test_the_baseline_reads_no_llm_settings_and_opens_no_client():
    resolver = Resolver(unread)
    explainer, simulator = resolver.explainer(BASELINE), resolver.simulator(BASELINE)
    for made in (explainer, simulator):
        assert (made.name, made.prompt_version, made.producer_model) == (
            "baseline",
            "baseline-v2",
            None,
        )
    (candidate,) = resolver.run(lambda: explainer.explain(WINDOWS))
    assert candidate.text == 'fires on "def" (10) and " return" (7)'
    assert resolver.run(lambda: simulator.simulate('"def"', TOKENS)) == [[10, 0, 0], [0, 0]]
    assert resolver.summary_line() is None
    assert explainer.dry_run([WINDOWS]) == simulator.dry_run([]) == DryRun(offline=True)


def test_an_llm_dry_run_reads_no_settings_and_counts_every_request():
    resolver = Resolver(unread)
    explainer = resolver.explainer("some-model", candidates=3, temperature=0.5)
    assert (explainer.name, explainer.prompt_version, explainer.producer_model) == (
        "some-model",
        "explainer-v1",
        "some-model",
    )
    request = explainer_request("some-model", WINDOWS, 0.5)
    per_call = sum(len(m.content) for m in request.messages) // 4
    assert explainer.dry_run([WINDOWS, WINDOWS]) == DryRun(
        example=request, calls=6, tokens=6 * per_call, reply_tokens=6 * (request.max_tokens or 0)
    )
    simulator = resolver.simulator("some-model", logprobs=False)
    plan = simulator.dry_run([("label", TOKENS), ("other", TOKENS[:1])])
    assert plan.calls == 3 and not plan.offline
    assert plan.example == simulator_request(
        "some-model", "label", TOKENS[0], logprobs=False, temperature=0.0
    )


def test_an_llm_without_a_key_for_its_endpoint_is_unavailable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    resolver = Resolver(lambda: LLMConfig(base_url="https://api.openai.com/v1"))
    simulator = resolver.simulator("gpt-4o-mini")
    with pytest.raises(LLMUnavailable, match="set OPENAI_API_KEY"):
        resolver.run(lambda: simulator.simulate("label", TOKENS))


@pytest.mark.parametrize("logprobs", [False, "ignore"])
def test_the_llm_simulator_falls_back_to_written_values_for_the_rest_of_the_run(logprobs):
    """Refused (400) or silently dropped: the first window settles it, alone; every score of
    the run is then `integer`, and the run says so once."""
    with FakeOpenAI(neuron_responder, logprobs=logprobs) as server:
        resolver = served(server)
        simulator = resolver.simulator("fake-model")
        first = resolver.run(lambda: simulator.simulation("return", TOKENS))
        assert simulator.logprobs is False
        assert [bool(r.get("logprobs")) for r in server.requests[:2]] == [True, False]
        asked = len(server.requests)
        again = resolver.run(lambda: simulator.simulation("return", [[" return", " y"]]))
        assert [r.get("logprobs") for r in server.requests[asked:]] == [None]
    assert first.values == [[0, 0, 0], [10, 0]] and again.values == [[10, 0]]
    assert first.prediction is again.prediction is PredictionKind.INTEGER
    (note,) = simulator.run_notes()
    assert "gives no logprobs" in note and "prediction: integer" in note
    assert (resolver.summary_line() or "").startswith("LLM: ")


def test_byte_aligned_logprobs_give_expected_values_where_strings_do_not_spell_the_reply():
    """The visible newline marker arrives as byte tokens with lossy strings; their `bytes`
    (kept by the client) still align every value with its logprobs."""
    tokens = [[" return", "\n", " x"]]

    def multi_byte(request: dict) -> Reply:
        (shown,) = prompt_records(request)
        return simulation_reply(shown, multi_byte=True)

    with FakeOpenAI(multi_byte) as server:
        resolver = served(server)
        simulator = resolver.simulator("fake-model")
        result = resolver.run(lambda: simulator.simulation("return", tokens))
    assert result.prediction is PredictionKind.EXPECTED_VALUE
    assert result.values == [pytest.approx([9.0, 1.0, 1.0])]  # 0.8 * v + 0.2 * 5
    assert simulator.run_notes() == []


def test_a_window_without_expected_values_fails_and_never_becomes_integers():
    """Logprobs whose bytes do not spell the reply: retried, then recorded as failed, as a
    misaligned reply would be; no integers slip into an expected-value score."""

    def lossy(request: dict) -> Reply:
        (shown,) = prompt_records(request)
        reply = simulation_reply(shown, multi_byte=True)
        assert reply.logprobs is not None
        reply.logprobs = [{k: v for k, v in e.items() if k != "bytes"} for e in reply.logprobs]
        return reply

    with FakeOpenAI(lossy) as server:
        resolver = Resolver(lambda: LLMConfig(base_url=server.base_url, max_retries=0))
        simulator = resolver.simulator("fake-model")
        with pytest.raises(SimulationFailed) as failed:
            resolver.run(lambda: simulator.simulate("return", [["\n", " return"]]))
    (failure,) = failed.value.failures
    assert "do not spell the reply" in failure.error
    assert server.calls == 3 and all(r.get("logprobs") for r in server.requests)
    assert simulator.logprobs is True  # a window's failure is not the endpoint's


def test_logprobs_refused_mid_label_redo_the_label_so_kinds_never_mix():
    """The first window gets expected values, then the endpoint refuses logprobs: the whole
    label is redone with integers, so its score is of one kind."""

    def refuse_after_first(request: dict) -> Reply:
        if request.get("logprobs") and server.calls > 1:
            return Reply(status=400, error="logprobs are not available any more")
        (shown,) = prompt_records(request)
        return simulation_reply(shown)

    with FakeOpenAI(refuse_after_first) as server:
        resolver = served(server)
        simulator = resolver.simulator("fake-model")
        result = resolver.run(lambda: simulator.simulation("return", TOKENS))
    assert result.prediction is PredictionKind.INTEGER
    assert result.values == [[0, 0, 0], [10, 0]]  # not the first window's 1.0s
    assert len(simulator.run_notes()) == 1


def test_the_llm_simulator_fails_with_each_windows_reason():
    def short(request: dict) -> Reply:
        (tokens,) = prompt_records(request)
        return simulation_reply(tokens, drop_last=True)

    with FakeOpenAI(short) as server:
        resolver = served(server)
        simulator = resolver.simulator("fake-model")
        with pytest.raises(SimulationFailed) as failed:
            resolver.run(lambda: simulator.simulate("return", TOKENS))
    assert len(failed.value.failures) == len(TOKENS)
    assert all("token lines" in f.error and "<start>" in f.raw for f in failed.value.failures)
    assert all(f.cause is Cause.UNPARSEABLE for f in failed.value.failures)


def test_a_failed_llm_call_is_one_failed_candidate():
    with FakeOpenAI(lambda request: Reply(status=503, error="overloaded")) as server:
        resolver = served(server)
        explainer = resolver.explainer("fake-model", candidates=3)
        (candidate,) = resolver.run(lambda: explainer.explain(WINDOWS))
    assert candidate.text is None and candidate.raw == ""
    assert "overloaded" in (candidate.error or "")
    assert candidate.cause is Cause.SERVER_ERROR


@pytest.mark.parametrize("role", ["explainer", "simulator"])
def test_a_refused_key_is_raised_not_recorded(role):
    """Every other call would be refused too: the error leaves the explainer or simulator,
    after one request, instead of becoming one failed neuron."""
    with FakeOpenAI(lambda request: Reply(status=401, error="bad key")) as server:
        resolver = served(server)
        explainer = resolver.explainer("fake-model", candidates=3)
        simulator = resolver.simulator("fake-model")
        work = {
            "explainer": lambda: explainer.explain(WINDOWS),
            "simulator": lambda: simulator.simulate("return", TOKENS),
        }[role]
        with pytest.raises(LLMFatal, match=r"refused the API key \(HTTP 401: bad key\)"):
            resolver.run(work)
    assert 1 <= server.calls <= 3  # the calls already in flight, not one per retry
