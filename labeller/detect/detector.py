"""A detector and the window it reads: the tokens' strings concatenated, with each token's
character offsets, whatever the tokenizer produced them.

Detectors find things in the text (a regex match, a character inside a Python string) and the
window maps them back to tokens: a token takes the largest value of the characters it covers, so
a token is 1 when it overlaps a match. Byte tokens (`<0xC3>`, a piece of a character that the
views write in hex) read as one U+FFFD each, so their hex names never look like hex numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from labeller.errors import UserError

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
BYTE_CHAR = "\ufffd"


class DetectorError(UserError):
    """A detector cannot be made or run as asked (bad pattern, bad plugin, wrong length)."""


def token_string(token: str) -> str:
    """The text a token contributes to its window (byte pieces as U+FFFD)."""
    return _BYTE_PIECE.sub(BYTE_CHAR, token)


@dataclass(frozen=True)
class Window:
    """A window's tokens, its text and where each token's characters lie in that text."""

    tokens: tuple[str, ...]
    text: str
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    @classmethod
    def of(cls, tokens: Sequence[str]) -> Window:
        pieces = [token_string(t) for t in tokens]
        starts, ends, at = [], [], 0
        for piece in pieces:
            starts.append(at)
            at += len(piece)
            ends.append(at)
        return cls(tuple(tokens), "".join(pieces), tuple(starts), tuple(ends))

    def __len__(self) -> int:
        return len(self.tokens)

    @cached_property
    def _nonempty(self) -> tuple[np.ndarray, np.ndarray]:
        """The tokens with characters, and their start offsets (increasing, back to back)."""
        starts, ends = np.asarray(self.starts, dtype=np.intp), np.asarray(self.ends, dtype=np.intp)
        keep = ends > starts
        return keep, starts[keep]

    def from_chars(self, chars: np.ndarray) -> list[float]:
        """Each token's largest character value (0 for a token with no characters)."""
        values = np.zeros(len(self.tokens))
        keep, starts = self._nonempty
        if starts.size:
            values[keep] = np.maximum.reduceat(np.asarray(chars, dtype=float), starts)
        return values.tolist()

    def from_spans(self, spans: Iterable[tuple[int, int]], value: float = 1.0) -> list[float]:
        """`value` for every token that overlaps one of the character spans, else 0."""
        chars = np.zeros(len(self.text) + 1)
        for start, end in spans:
            chars[start : max(end, start + 1)] = np.maximum(
                chars[start : max(end, start + 1)], value
            )
        return self.from_chars(chars[: len(self.text)])


ValueFunction = Callable[[Window], Sequence[float]]


@dataclass(frozen=True)
class Detector:
    """A named feature of tokens: `values(tokens)` gives each token 0/1 or a graded value.

    `definition` says exactly what computes it (a built-in's version, a regex's pattern, a
    plugin's entry point), so a stored score is replaced when the definition changes."""

    name: str
    description: str
    function: ValueFunction = field(repr=False)
    definition: str = ""

    def values(self, tokens: list[str]) -> list[float]:
        return self.window_values(Window.of(tokens))

    def window_values(self, window: Window) -> list[float]:
        values = [float(v) for v in self.function(window)]
        if len(values) != len(window):
            raise DetectorError(
                f"detector {self.name} gave {len(values)} values for {len(window)} tokens"
            )
        return values


def regex_function(pattern: str | re.Pattern[str], group: int | str = 0) -> ValueFunction:
    """1 for every token overlapping a match (or the match's `group`), else 0."""
    compiled = re.compile(pattern) if isinstance(pattern, str) else pattern

    def function(window: Window) -> list[float]:
        return window.from_spans(
            m.span(group) for m in compiled.finditer(window.text) if m.group(group) is not None
        )

    return function


def regex_detector(
    name: str,
    description: str,
    pattern: str | re.Pattern[str],
    definition: str = "",
    group: int | str = 0,
) -> Detector:
    """A detector that marks every token overlapping a match of `pattern`."""
    text = pattern if isinstance(pattern, str) else pattern.pattern
    return Detector(
        name, description, regex_function(pattern, group), definition or f"regex:{text}"
    )
