"""Falsification help: the LLM's test texts parsed strictly, and verdicts from real activations."""

from __future__ import annotations

import pytest
from fake_openai import FakeOpenAI, Reply

from labeller.errors import UserError
from labeller.explain.client import ReplyError
from labeller.explain.falsify import Suggestion, judge, parse_suggestions, suggest_tests
from labeller.explain.resolve import Resolver
from labeller.llm.config import LLMConfig


def test_suggestions_parse_from_a_fenced_json_reply():
    reply = '```json\n{"fire": ["def f():", "  "], "quiet": ["the cat", 3]}\n```'
    assert parse_suggestions(reply) == [Suggestion("def f():", True), Suggestion("the cat", False)]


@pytest.mark.parametrize("reply", ["no json here", "{not json}", '{"fire": "x"}', '{"fire": []}'])
def test_unusable_suggestions_are_errors(reply):
    with pytest.raises(ReplyError):
        parse_suggestions(reply)


def test_a_text_fires_at_a_quarter_of_the_scan_maximum():
    suggestions = [Suggestion("a", True), Suggestion("b", False), Suggestion("c", True)]
    verdicts = judge(suggestions, [["a"], ["b"], ["c"]], [[1.0], [0.9], [0.0]], neuron_max=4.0)
    assert [(v.fired, v.hit) for v in verdicts] == [(True, True), (False, True), (False, False)]


def test_suggest_tests_asks_with_the_label_and_says_which_model_failed():
    replies = iter([Reply(content='{"fire": ["return x"]}'), Reply(content="I cannot help.")])
    with FakeOpenAI(lambda request: next(replies)) as server:
        resolver = Resolver(lambda: LLMConfig(base_url=server.base_url))
        client = resolver.chat_client()
        label = 'the "return" keyword'
        assert resolver.run(lambda: suggest_tests(client, "fake-llm", label)) == [
            Suggestion("return x", True)
        ]
        assert label in server.requests[0]["messages"][1]["content"]
        with pytest.raises(UserError, match="fake-llm gave no usable test texts: reply holds no"):
            resolver.run(lambda: suggest_tests(client, "fake-llm", "another label"))
