"""Built-in detectors for basic syntax (the seed essay's list): start of line, end of sentence,
numbers, years, dates, phone numbers, capitalised words that do not start a sentence, the
end-of-text/BOS token and words continued without a leading space (split tokens)."""

from __future__ import annotations

import re

from labeller.detect.detector import Detector, Window, regex_detector

VERSION = "builtin-v1"
_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
START_OF_LINE = re.compile(r"\n[ \t]*(\S)")
END_OF_SENTENCE = re.compile(r"(?<=[\w)\]\"'])[.!?]+(?=[\"')\]]*(?:\s|$))")
NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?!\w)")
YEAR = re.compile(r"(?<![\w.,])(?:1[5-9]\d\d|20\d\d)(?![\w]|[.,]\d)")
DATE = re.compile(
    r"(?<!\d)\d{4}-\d{1,2}-\d{1,2}(?!\d)"
    r"|(?<!\d)\d{1,2}[/.]\d{1,2}[/.](?:\d{4}|\d{2})(?!\d)"
    rf"|\b{_MONTH}\.? \d{{1,2}}(?:st|nd|rd|th)?(?:, \d{{4}})?\b"
    rf"|\b\d{{1,2}}(?:st|nd|rd|th)? (?:of )?{_MONTH}(?: \d{{4}})?\b"
)
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?!\w)"
)
CAPITALISED = re.compile(r"\b[A-Z][a-z]+(?:'[a-z]+)?\b")
SENTENCE_START = re.compile(r"(?:[.!?][\"')\]]*\s+|\n\s*|^\s*)$")
END_OF_TEXT_TOKENS = frozenset(
    {
        "<|endoftext|>",
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<s>",
        "</s>",
        "<bos>",
        "<eos>",
        "<|im_start|>",
        "<|im_end|>",
        "[CLS]",
        "[SEP]",
    }
)


def _capitalised_mid_sentence(window: Window) -> list[float]:
    """Capitalised words not at a sentence or line start (the window's first word is unknown:
    it is not marked)."""
    spans = [
        m.span()
        for m in CAPITALISED.finditer(window.text)
        if not SENTENCE_START.search(window.text[: m.start()])
    ]
    return window.from_spans(spans)


def _end_of_text(window: Window) -> list[float]:
    return [float(t.strip() in END_OF_TEXT_TOKENS) for t in window.tokens]


def _split_token(window: Window) -> list[float]:
    """A token that starts with a letter right after a token that ends with one: the word goes
    on without a space, as in `Cl|aire`. The window's first token has no known predecessor."""
    values = [0.0] * len(window)
    for i in range(1, len(window)):
        before, token = window.tokens[i - 1], window.tokens[i]
        if token[:1].isalpha() and before[-1:].isalpha():
            values[i] = 1.0
    return values


DETECTORS = [
    regex_detector(
        "start-of-line",
        "the first non-blank token of a line (after a newline in the window)",
        START_OF_LINE,
        f"{VERSION}:start-of-line",
        group=1,
    ),
    regex_detector(
        "end-of-sentence",
        "punctuation ending a sentence (. ! ? after a word, before a space or the end)",
        END_OF_SENTENCE,
        f"{VERSION}:end-of-sentence",
    ),
    regex_detector("number", "a number (digits, with . or , inside)", NUMBER, f"{VERSION}:number"),
    regex_detector("year", "a year from 1500 to 2099 standing alone", YEAR, f"{VERSION}:year"),
    regex_detector(
        "date",
        "a date: 2023-01-31, 31/01/2023, Jan 31, 2023 or 31 January 2023",
        DATE,
        f"{VERSION}:date",
    ),
    regex_detector(
        "phone-number",
        "a phone number, with or without a country code: +44 20 7946 0958, (555) 123-4567",
        PHONE,
        f"{VERSION}:phone-number",
    ),
    Detector(
        "capitalised-word",
        "a capitalised word that does not start a sentence or line (a proper noun, mostly)",
        _capitalised_mid_sentence,
        f"{VERSION}:capitalised-word",
    ),
    Detector(
        "end-of-text",
        "the end-of-text / BOS special token (<|endoftext|>, <s>, </s>, ...)",
        _end_of_text,
        f"{VERSION}:end-of-text",
    ),
    Detector(
        "split-token",
        "a word continued without a leading space (the token after `Cl` in `Cl|aire`)",
        _split_token,
        f"{VERSION}:split-token",
    ),
]
