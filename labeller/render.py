"""Terminal rendering of tokens and activations, shared by the CLI (and later the TUI).

Tokens are shown as plain text, never as markup, and control characters are made visible, so a
token such as `[/]` or an escape sequence cannot restyle or clear the terminal.
"""

from __future__ import annotations

from functools import lru_cache

from rich.text import Text

VISIBLE = {"\n": "⏎", "\t": "⇥", "\r": "␍"}
SPARK = " ▁▂▃▄▅▆▇█"


@lru_cache(maxsize=65536)
def visible_token(token: str) -> str:
    return _visible(token)


def _visible(token: str) -> str:
    out = []
    for char in token:
        if char in VISIBLE:
            out.append(VISIBLE[char])
        elif ord(char) < 32 or 0x7F <= ord(char) < 0xA0:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def printable(text: str) -> str:
    """User-supplied text (labels, names, tokens, imported strings) safe to print: control
    characters, escape sequences included, shown as `\\xNN` so they cannot move the cursor, clear
    the screen or retitle the terminal; newlines and tabs shown as in tokens."""
    return visible_token(text) if len(text) < 256 else _visible(text)


def heat_style(value: float, scale: float) -> str:
    """Orange for positive activation, blue for negative, intensity relative to `scale`."""
    if scale <= 0 or value == 0:
        return ""
    level = max(-1.0, min(1.0, value / scale))
    if level > 0:
        return f"on rgb({255},{int(255 - 135 * level)},{int(255 - 255 * level)}) black"
    level = -level
    return f"on rgb({int(255 - 200 * level)},{int(255 - 120 * level)},255) black"


def heat_text(
    tokens: list[str], activations: list[float], scale: float, mark: int | None = None
) -> Text:
    text = Text()
    for index, (token, value) in enumerate(zip(tokens, activations, strict=True)):
        style = heat_style(value, scale)
        if index == mark:
            style = f"{style} bold underline".strip()
        text.append(visible_token(token), style=style)
    return text


def sparkline(counts: list[int]) -> str:
    if not counts:
        return ""
    top = max(counts)
    return "".join(SPARK[0 if c == 0 else max(1, round(8 * c / top))] for c in counts)


def precision_bar(precision: float, width: int = 10) -> tuple[str, str]:
    """A precision in 0..1 as the filled and the empty part of a bar of `width` cells, e.g.
    ('██████', '░░░░') for 0.6 (the TUI colours the parts; the CLI prints them together)."""
    filled = round(max(0.0, min(1.0, precision)) * width)
    return "█" * filled, "░" * (width - filled)


def precision_spark(precisions: list[float]) -> str:
    """One cell per activation band, its height the precision (0..1, absolute), e.g. '▁██▆'."""
    top = len(SPARK) - 1
    return "".join(SPARK[round(max(0.0, min(1.0, p)) * top)] for p in precisions)
