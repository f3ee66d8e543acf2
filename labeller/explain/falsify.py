"""Falsification help: ask an LLM for texts that should and should not fire a neuron, given a
label, then judge the label by what the model actually does on them.

No UI and no model: the request, strict reply parsing, and the verdicts. The caller runs the
texts through the model between `suggest_tests` and `judge`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from labeller.errors import UserError
from labeller.explain.client import ChatClient, LLMCallError, ReplyError
from labeller.explain.prompts import load_template
from labeller.records import ChatMessage, ChatRequest

# A text "fires" the neuron when it reaches this share of the neuron's largest scan activation.
FIRE_SHARE = 0.25
MAX_TEXT_CHARS = 200


@dataclass(frozen=True)
class Suggestion:
    text: str
    should_fire: bool


@dataclass(frozen=True)
class Verdict:
    """One suggested text after running it through the model."""

    suggestion: Suggestion
    tokens: list[str]
    activations: list[float]
    peak: float
    fired: bool

    @property
    def hit(self) -> bool:
        """The label predicted what the neuron did."""
        return self.fired == self.suggestion.should_fire


def suggest_request(model: str, label: str, count: int = 5) -> ChatRequest:
    template = load_template("suggest_tests")
    return ChatRequest(
        model=model,
        messages=[
            ChatMessage(role="system", content=template.system),
            ChatMessage(role="user", content=template.user.format(label=label, count=count)),
        ],
        temperature=0.7,
        max_tokens=1200,
    )


def parse_suggestions(reply: str) -> list[Suggestion]:
    """The texts of a `{"fire": [...], "quiet": [...]}` reply (code fences allowed)."""
    match = re.search(r"\{.*\}", reply, re.S)
    if match is None:
        raise ReplyError("reply holds no JSON object", reply)
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        raise ReplyError(f"reply is not valid JSON ({exc.msg})", reply) from None
    if not isinstance(data, dict):
        raise ReplyError("reply JSON is not an object", reply)
    suggestions = []
    for key, should_fire in (("fire", True), ("quiet", False)):
        texts = data.get(key, [])
        if not isinstance(texts, list):
            raise ReplyError(f'"{key}" is not a list', reply)
        suggestions += [
            Suggestion(text[:MAX_TEXT_CHARS], should_fire)
            for text in texts
            if isinstance(text, str) and text.strip()
        ]
    if not suggestions:
        raise ReplyError("reply suggests no texts", reply)
    return suggestions


async def suggest_tests(client: ChatClient, model: str, label: str) -> list[Suggestion]:
    """The texts `model` expects to fire or not fire a neuron with this label; a UserError when
    the call fails or the reply holds none."""
    try:
        reply = await client.complete(suggest_request(model, label))
        return parse_suggestions(reply.text)
    except (ReplyError, LLMCallError) as exc:
        raise UserError(f"{model} gave no usable test texts: {exc}") from None


def judge(
    suggestions: Sequence[Suggestion],
    tokens: Sequence[list[str]],
    activations: Sequence[list[float]],
    neuron_max: float,
) -> list[Verdict]:
    """Did each text fire the neuron (peak at least FIRE_SHARE of its scan maximum)?"""
    threshold = FIRE_SHARE * neuron_max if neuron_max > 0 else float("inf")
    verdicts = []
    for suggestion, toks, acts in zip(suggestions, tokens, activations, strict=True):
        peak = max(acts) if acts else 0.0
        verdicts.append(Verdict(suggestion, toks, acts, peak, peak >= threshold))
    return verdicts
