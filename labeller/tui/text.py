"""Rich `Text` building for the TUI: tokens, labels and numbers as plain text, never markup.

Everything that came from a model, a corpus, an LLM or a person goes through `shown` or `plain`,
so a token such as `[/]` or `\\x1b[2J` is displayed as those characters and can neither restyle
the screen nor reach the terminal as a control sequence.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence

from rich.text import Text

from labeller.render import visible_token

SPARK = "▁▂▃▄▅▆▇█"
ELLIPSIS = "…"
# Format characters (bidi overrides, zero-width joiners) and line/paragraph separators reorder
# or hide text; they are shown as escapes.
HIDDEN_CATEGORIES = {"Cf", "Zl", "Zp", "Cs", "Co"}
# The heat palette, for the app's dark background: values under FAINT of the scale stay
# uncoloured, so the tokens that fire stand out instead of every token being tinted.
FAINT = 0.05
BASE = (48, 48, 48)
HOT = (255, 140, 0)
COLD = (70, 130, 255)


def heat_style(value: float, scale: float) -> str:
    """Background from the base grey towards orange (positive) or blue (negative)."""
    if scale <= 0 or not math.isfinite(value):
        return ""
    level = max(-1.0, min(1.0, value / scale))
    if abs(level) < FAINT:
        return ""
    strength = abs(level) ** 0.7
    target = HOT if level > 0 else COLD
    red, green, blue = (round(b + (t - b) * strength) for b, t in zip(BASE, target, strict=True))
    ink = "black" if strength > 0.55 else "white"
    return f"{ink} on rgb({red},{green},{blue})"


def escaped(text: str) -> str:
    """Newlines and tabs as symbols, control and invisible format characters as escapes."""
    return "".join(
        f"\\u{ord(c):04x}" if unicodedata.category(c) in HIDDEN_CATEGORIES else c
        for c in visible_token(text)
    )


def editable(text: str) -> str:
    """Text safe to put in an input box: newlines and tabs kept, other control and invisible
    format characters written out as escapes (a box shows its text raw)."""
    return "".join(
        c
        if c in "\n\t" or unicodedata.category(c) not in HIDDEN_CATEGORIES | {"Cc"}
        else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        for c in text
    )


def shown(token: str) -> str:
    """A token as displayed: `escaped`, and a token that is only spaces drawn with middle dots
    so it can be seen and selected."""
    text = escaped(token)
    if text and not text.strip(" "):
        return "·" * len(text)
    return text


def plain(text: str | None, style: str = "") -> Text:
    """A label or other free text as one safe line of plain text."""
    return Text(escaped(text or ""), style)


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def heat(
    tokens: Sequence[str],
    values: Sequence[float],
    scale: float,
    mark: int | None = None,
    *,
    start: int = 0,
    end: int | None = None,
    separator: str = "",
    cut_marks: bool = True,
) -> Text:
    """Tokens `start:end` coloured by value (orange up, blue down), `mark` bold and underlined,
    with an ellipsis where the window was cut (unless `cut_marks` is off)."""
    end = len(tokens) if end is None else end
    out = Text()
    if start > 0 and cut_marks:
        out.append(ELLIPSIS, "dim")
    for index in range(start, end):
        style = heat_style(values[index], scale)
        if index == mark:
            style = f"{style} bold underline".strip()
        out.append(shown(tokens[index]), style)
        if separator and index < end - 1:
            out.append(separator, "dim")
    if end < len(tokens) and cut_marks:
        out.append(ELLIPSIS, "dim")
    return out


def peak(values: Sequence[float]) -> int:
    """The position of the first maximum: the token a trace is shown and perturbed around."""
    return max(range(len(values)), key=values.__getitem__)


def cut_around(tokens: Sequence[str], center: int, budget: int) -> tuple[int, int]:
    """The widest token range around `center` whose text fits in `budget` cells (a bit more
    context before the max than after, as the past is what the neuron can see)."""
    if not tokens:
        return 0, 0
    center = min(max(center, 0), len(tokens) - 1)
    start, end = center, center + 1
    used = len(shown(tokens[center]))
    grew = True
    while grew:
        grew = False
        for side in ("left", "left", "right"):
            if side == "left" and start > 0:
                width = len(shown(tokens[start - 1]))
                if used + width <= budget:
                    start -= 1
                    used += width
                    grew = True
            elif side == "right" and end < len(tokens):
                width = len(shown(tokens[end]))
                if used + width <= budget:
                    end += 1
                    used += width
                    grew = True
    return start, end


def legend(scale: float, steps: int = 5) -> Text:
    """The colour scale: from 0 to `scale`, and blue for negative values."""
    out = Text(f"{-scale:.3g} ", "dim")
    for level in range(steps, 0, -1):
        out.append(" ", heat_style(-scale * level / steps, scale))
    out.append("0")
    for level in range(1, steps + 1):
        out.append(" ", heat_style(scale * level / steps, scale))
    out.append(f" {scale:.3g}", "dim")
    return out


def spark(values: Sequence[float], width: int, *, log: bool = False) -> str:
    """A sparkline of `values` squeezed into at most `width` cells (bins summed)."""
    if not values or width <= 0:
        return ""
    group = max(1, math.ceil(len(values) / width))
    sums = [sum(values[i : i + group]) for i in range(0, len(values), group)]
    if log:
        sums = [math.log1p(max(v, 0.0)) for v in sums]
    low, high = min(min(sums), 0.0), max(sums)
    if high <= low:
        return SPARK[0] * len(sums)
    return "".join(SPARK[round((v - low) / (high - low) * (len(SPARK) - 1))] for v in sums)


def hard_wrap(text: Text, width: int) -> Text:
    """Break `text` every `width` cells, as a terminal would: token streams have no words."""
    if width <= 0 or len(text) <= width:
        return text
    lines = text.divide(range(width, len(text), width))
    return Text("\n").join(lines)


def aligned_rows(
    tokens: Sequence[str],
    rows: Sequence[tuple[str, Sequence[float], float]],
    width: int,
) -> list[Text]:
    """Several colourings of the same tokens, wrapped together so each token sits above itself:
    for each chunk of tokens that fits `width`, one line per (name, values, scale) row."""
    name_width = max((len(name) for name, _, _ in rows), default=0) + 1
    room = max(8, width - name_width)
    lines: list[Text] = []
    start = 0
    while start < len(tokens):
        end, used = start, 0
        while end < len(tokens) and (used + len(shown(tokens[end])) <= room or end == start):
            used += len(shown(tokens[end]))
            end += 1
        for name, values, scale in rows:
            line = Text(name.ljust(name_width), "dim")
            line.append_text(heat(tokens, values, scale, start=start, end=end, cut_marks=False))
            lines.append(line)
        start = end
    return lines


STATUS_STYLE = {
    "accepted": "bold green",
    "proposed": "cyan",
    "needs_review": "yellow",
    "rejected": "red",
    "withdrawn": "dim",
    "unlabelled": "dim",
}


def status_text(status: str) -> Text:
    return Text(status.replace("_", " "), STATUS_STYLE.get(status, ""))
