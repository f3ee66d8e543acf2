"""One token id as text, the way every view shows it: bytes that are not whole UTF-8 characters
are written `<0xNN>` instead of the replacement character U+FFFD the tokenizer decodes them to.

Byte-level BPE (GPT-2 and most models since) splits a character such as `é` or `☃` into byte
tokens; decoded one at a time, each is U+FFFD, so a window of them reads `���` and every byte looks
the same. SentencePiece byte-fallback tokens already carry their `<0xNN>` name.
"""

from __future__ import annotations

import codecs
import re
from functools import cache
from typing import Any

REPLACEMENT = "\ufffd"
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _hex_bytes(error: UnicodeError) -> tuple[str, int]:
    assert isinstance(error, UnicodeDecodeError)
    bad = error.object[error.start : error.end]
    return "".join(f"<0x{b:02X}>" for b in bad), error.end


codecs.register_error("labeller-hex-bytes", _hex_bytes)


@cache
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-to-printable-character table, inverted (the byte-level pre-tokenizer's)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_text(tokenizer: Any, token_id: int) -> str:
    """The token decoded on its own, with bytes that do not make whole characters as `<0xNN>`."""
    text = str(tokenizer.decode([token_id]))
    if REPLACEMENT not in text:
        return text
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if not isinstance(piece, str):
        return text
    if _BYTE_PIECE.fullmatch(piece):
        return f"<0x{piece[3:5].upper()}>"
    table = _byte_level_decoder()
    if piece and all(c in table for c in piece):
        raw = bytes(table[c] for c in piece)
        if REPLACEMENT.encode() not in raw:  # a real U+FFFD in the text stays one
            return raw.decode("utf-8", errors="labeller-hex-bytes")
    return text
