"""Built-in detectors for code in any language: hexadecimal, base64, HTML tags and LaTeX
commands and sectioning."""

from __future__ import annotations

import re

from labeller.detect.detector import regex_detector

VERSION = "builtin-v1"
HEX = re.compile(
    r"(?<!\w)0[xX][0-9A-Fa-f]+(?!\w)"
    r"|(?<![\w#])#[0-9A-Fa-f]{6}(?![\w])"
    r"|(?<![\w])(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}(?![\w])"
)
BASE64 = re.compile(
    r"(?<![A-Za-z0-9+/=])(?=[A-Za-z0-9+/]*\d)(?=[A-Za-z0-9+/]*[a-z])(?=[A-Za-z0-9+/]*[A-Z])"
    r"[A-Za-z0-9+/]{16,}={0,2}(?![A-Za-z0-9+/=])"
)
HTML_TAG = re.compile(r"</?[A-Za-z][\w-]*(?:\s[^<>]*)?/?>")
HTML_CLOSING = re.compile(r"</[A-Za-z][\w-]*\s*>")
LATEX_COMMAND = re.compile(r"\\[A-Za-z]+\*?")
LATEX_SECTION = re.compile(
    r"\\(?:(?:sub)*section|chapter|paragraph|part|abstract|title|maketitle)\*?(?![A-Za-z])"
    r"|\\begin\{abstract\}"
)

DETECTORS = [
    regex_detector(
        "hex",
        "a hexadecimal number: 0x1F, #a0b1c2, or 8+ hex digits mixing letters and digits",
        HEX,
        f"{VERSION}:hex",
    ),
    regex_detector(
        "base64",
        "a base64 run: 16+ characters of A-Z a-z 0-9 + / mixing cases and digits",
        BASE64,
        f"{VERSION}:base64",
    ),
    regex_detector(
        "html-tag",
        "an HTML/XML tag, opening or closing: <div class=..>, </p>",
        HTML_TAG,
        f"{VERSION}:html-tag",
    ),
    regex_detector(
        "html-closing-tag",
        "a closing HTML/XML tag: </p>, </div>",
        HTML_CLOSING,
        f"{VERSION}:html-closing-tag",
    ),
    regex_detector(
        "latex-command",
        "a LaTeX command: \\left, \\frac, \\section",
        LATEX_COMMAND,
        f"{VERSION}:latex-command",
    ),
    regex_detector(
        "latex-section",
        "a LaTeX sectioning command: \\section, \\subsection, \\chapter, \\abstract",
        LATEX_SECTION,
        f"{VERSION}:latex-section",
    ),
]
