"""Explainers and simulators by name: what each records, what a dry run counts, when the LLM
client opens, and how LLM failures and the logprob fallback surface (against a real local
OpenAI-compatible server)."""

from __future__ import annotations

import pytest
from fake_openai import FakeOpenAI, Reply, neuron_responder, prompt_records, simulation_reply

from labeller.explain.client import Cause, DryRun, LLMFatal
from labeller.explain.explainer import explainer_request
from labeller.explain.resolve import BASELINE, LLMUnavailable, Resolver
from labeller.explain.simulator import SimulationFailed, simulator_request
from labeller.llm.config import LLMConfig

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
        example=request, calls=6, tokens=6 * per_call
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


def test_the_llm_simulator_falls_back_to_written_values_for_the_rest_of_the_run():
    with FakeOpenAI(neuron_responder, logprobs=False) as server:
        resolver = served(server)
        simulator = resolver.simulator("fake-model")
        predictions = resolver.run(lambda: simulator.simulate("return", TOKENS))
        assert simulator.logprobs is False
        asked = len(server.requests)
        again = resolver.run(lambda: simulator.simulate("return", [[" return", " y"]]))
        assert [r.get("logprobs") for r in server.requests[asked:]] == [None]
    assert predictions == [[0, 0, 0], [10, 0]] and again == [[10, 0]]
    assert (resolver.summary_line() or "").startswith("LLM: ")


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
