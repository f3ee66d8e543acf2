"""Strict parsing of explainer and simulator replies."""

from __future__ import annotations

import math

import pytest

from labeller.explain.client import ReplyError
from labeller.explain.explainer import parse_explanation
from labeller.explain.simulator import parse_simulation
from labeller.records import ChatResponse, PredictionKind, TokenLogprob, TopLogprob

TOKENS = [" if", " x", ":", "\n", "return"]


def reply_lines(values: list[int], tokens: list[str] = TOKENS) -> str:
    from labeller.render import visible_token

    body = "\n".join(f"{visible_token(t)}\t{v}" for t, v in zip(tokens, values, strict=True))
    return f"<start>\n{body}\n<end>"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (" return keywords in Python.", "return keywords in Python."),
        ("the main thing this neuron does is find commas in lists", "commas in lists"),
        (
            "Explanation of neuron 3 behavior: "
            "the main thing this neuron does is find dates.\nmore",
            "dates.",
        ),
    ],
)
def test_explanations_parse(reply, expected):
    assert parse_explanation(reply) == expected


@pytest.mark.parametrize("reply", ["", "   \n ", "ok", "<start>\nthe\t3\n<end>", "x" * 500])
def test_unusable_explanations_are_errors(reply):
    with pytest.raises(ReplyError):
        parse_explanation(reply)


def test_simulation_without_logprobs_uses_written_values():
    text = reply_lines([0, 0, 1, 0, 10])
    values = parse_simulation(ChatResponse(text=text), TOKENS, PredictionKind.INTEGER)
    assert values == [0, 0, 1, 0, 10]


def test_expected_values_never_fall_back_to_written_integers():
    """A reply without logprobs cannot give expected values: an error (retried, then a
    recorded failure), not integers mixed into an expected-value score."""
    with pytest.raises(ReplyError, match="no logprobs"):
        parse_simulation(
            ChatResponse(text=reply_lines([0, 0, 1, 0, 10])), TOKENS, PredictionKind.EXPECTED_VALUE
        )


@pytest.mark.parametrize(
    "text",
    [
        reply_lines([0, 0, 1, 0], TOKENS[:4]),  # one line short
        reply_lines([0, 0, 1, 0, 10], [" if", " y", ":", "\n", "return"]),  # wrong token
        reply_lines([0, 0, 1, 0, 10]).replace("\t10", "\thigh"),  # not a number
        reply_lines([0, 0, 1, 0, 10]).replace("\t10", "\t11"),  # out of range
        "I think it fires on return.",
    ],
)
def test_misaligned_or_malformed_simulations_are_errors(text):
    with pytest.raises(ReplyError):
        parse_simulation(ChatResponse(text=text), TOKENS, PredictionKind.INTEGER)


def logprob_tokens(text: str, distributions: dict[int, dict[str, float]]) -> list[TokenLogprob]:
    """Split text into one logprob token per character run, with given alternatives at offsets."""
    tokens, i = [], 0
    while i < len(text):
        j = i + 1
        while j < len(text) and text[j].isdigit() and text[i].isdigit():
            j += 1
        piece = text[i:j]
        alternatives = distributions.get(i, {})
        tokens.append(
            TokenLogprob(
                token=piece,
                logprob=0.0,
                top_logprobs=[
                    TopLogprob(token=t, logprob=math.log(p)) for t, p in alternatives.items()
                ],
            )
        )
        i = j
    return tokens


def test_simulation_with_logprobs_takes_expected_value():
    text = reply_lines([0, 0, 1, 0, 10])
    offsets = [i + 1 for i, c in enumerate(text) if c == "\t"]
    distributions = {offset: {"0": 0.9, "10": 0.1} for offset in offsets}
    distributions[offsets[4]] = {"10": 0.5, "8": 0.25, "6": 0.2, " the": 0.05}
    response = ChatResponse(text=text, logprobs=logprob_tokens(text, distributions))
    values = parse_simulation(response, TOKENS, PredictionKind.EXPECTED_VALUE)
    assert values[0] == pytest.approx(1.0)
    assert values[4] == pytest.approx((10 * 0.5 + 8 * 0.25 + 6 * 0.2) / 0.95)


def byte_split(tokens: list[TokenLogprob], *, with_bytes: bool) -> list[TokenLogprob]:
    """Each non-ASCII character's bytes as one-byte tokens whose strings are lossy, as OpenAI
    sends tokens that end inside a character (`bytes` exact, `token` not)."""
    out = []
    for token in tokens:
        if token.token.isascii():
            out.append(token._replace(bytes=list(token.token.encode()) if with_bytes else None))
            continue
        for byte in token.token.encode():
            out.append(
                TokenLogprob(f"bytes:\\x{byte:02x}", 0.0, [], [byte] if with_bytes else None)
            )
    return out


def test_expected_values_align_by_bytes_where_strings_do_not_spell_the_reply():
    text = reply_lines([0, 0, 1, 3, 10])  # "\n" is shown as a multi-byte marker
    assert not text.isascii()
    offsets = [i + 1 for i, c in enumerate(text) if c == "\t"]
    distributions = {offset: {"0": 0.5, "2": 0.5} for offset in offsets}
    distributions[offsets[3]] = {"3": 0.75, "7": 0.25}
    split = logprob_tokens(text, distributions)
    aligned = parse_simulation(
        ChatResponse(text=text, logprobs=byte_split(split, with_bytes=True)),
        TOKENS,
        PredictionKind.EXPECTED_VALUE,
    )
    assert aligned == pytest.approx([1.0, 1.0, 1.0, 4.0, 1.0])
    with pytest.raises(ReplyError, match="do not spell the reply"):  # the strings alone fail
        parse_simulation(
            ChatResponse(text=text, logprobs=byte_split(split, with_bytes=False)),
            TOKENS,
            PredictionKind.EXPECTED_VALUE,
        )


def test_a_value_split_across_tokens_is_an_error_not_a_guess():
    text = reply_lines([0, 0, 1, 0, 10])
    tokens = []
    for piece in logprob_tokens(text, {}):
        if piece.token == "10":  # "1" then "0": the logprobs at "1" are not the value's
            tokens += [TokenLogprob("1", 0.0, [TopLogprob("1", 0.0)]), TokenLogprob("0", 0.0, [])]
        else:
            tokens.append(piece._replace(top_logprobs=[TopLogprob(piece.token, 0.0)]))
    with pytest.raises(ReplyError, match="not one token of its own"):
        parse_simulation(
            ChatResponse(text=text, logprobs=tokens), TOKENS, PredictionKind.EXPECTED_VALUE
        )
