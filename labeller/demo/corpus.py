"""The demo corpus: text every Python installation already has, so the demo needs no download.

Documents are the standard library's own ``.py`` files (Python source with English docstrings and
comments) and the prose topics of its bundled documentation (``pydoc_data.topics``). Everything
here is a pure function of the running interpreter's files: the same Python builds the same
corpus, byte for byte, which the fingerprint lets tests and model metadata check. Different Python
versions ship different standard libraries, so a fingerprint is only comparable within one version.
"""

from __future__ import annotations

import hashlib
import platform
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

CorpusPart = Literal["all", "train", "heldout"]

# Files above this are generated tables or data, not code anyone reads.
MAX_SOURCE_BYTES = 200_000
# Caps the Python source so the corpus stays a few MB on every Python version; prose is never cut.
SOURCE_CHAR_BUDGET = 8_000_000
# Share of documents held out for evaluation (by a stable hash of the doc id).
HELDOUT_PERCENT = 7

# Directories whose files are test data, a duplicate of the prose we add anyway (pydoc_data), or
# generated codec tables (encodings: 1.4 MB of escaped byte maps that would crowd the vocabulary).
_SKIPPED_DIRS = frozenset(
    {
        "__pycache__",
        "encodings",
        "idle_test",
        "idlelib",
        "lib2to3",
        "pydoc_data",
        "site-packages",
        "dist-packages",
        "test",
        "tests",
    }
)


@dataclass(frozen=True)
class DemoDocument:
    """One corpus document; ``doc_id`` names its origin, e.g. ``stdlib:json/decoder.py``."""

    doc_id: str
    text: str

    @property
    def subset(self) -> str:
        """`code` for standard-library source, `prose` for the documentation topics: the two
        kinds of text the interpretability-illusion check compares a neuron across."""
        return "code" if self.doc_id.startswith("stdlib:") else "prose"


def _stable_int(salt: str, doc_id: str) -> int:
    """A hash that is the same in every process (unlike ``hash()``, which is salted per run)."""
    digest = hashlib.sha256(f"{salt}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def is_heldout(doc_id: str) -> bool:
    """Whether a document belongs to the held-out part; depends on the id only, so it is stable."""
    return _stable_int("labeller-demo-heldout", doc_id) % 100 < HELDOUT_PERCENT


def _stdlib_documents() -> list[DemoDocument]:
    """Every eligible standard-library source file, in path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    documents = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if _SKIPPED_DIRS.intersection(relative.parts[:-1]):
            continue
        if not path.is_file() or path.stat().st_size > MAX_SOURCE_BYTES:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            documents.append(DemoDocument(f"stdlib:{relative.as_posix()}", text))
    return documents


def _pydoc_documents() -> list[DemoDocument]:
    """The English prose of the bundled language reference, one document per topic."""
    from pydoc_data.topics import topics

    return [
        DemoDocument(f"pydoc:{name}", text) for name, text in sorted(topics.items()) if text.strip()
    ]


def _all_documents() -> list[DemoDocument]:
    """All documents in the fixed shuffled order, with the source trimmed to its budget.

    The order is a sort by a salted sha256 of the doc id, so source and prose are interleaved
    (the first windows of a scan are not just files starting with "a") and stay put across runs.
    """
    shuffled = sorted(
        _stdlib_documents() + _pydoc_documents(),
        key=lambda doc: _stable_int("labeller-demo-order", doc.doc_id),
    )
    documents = []
    source_chars = 0
    for doc in shuffled:
        if doc.doc_id.startswith("stdlib:"):
            if source_chars + len(doc.text) > SOURCE_CHAR_BUDGET:
                continue
            source_chars += len(doc.text)
        documents.append(doc)
    return documents


def iter_demo_documents(part: CorpusPart = "all") -> Iterator[DemoDocument]:
    """Yield the demo corpus (or its train / held-out part) in its deterministic order."""
    if part not in ("all", "train", "heldout"):
        raise ValueError(f"unknown corpus part {part!r}; use 'all', 'train' or 'heldout'")
    for doc in _all_documents():
        if part == "all" or (part == "heldout") == is_heldout(doc.doc_id):
            yield doc


def demo_corpus_fingerprint(part: CorpusPart = "all") -> str:
    """A sha256 over the ordered ids and texts: equal fingerprints mean identical corpora.

    Only comparable between builds on the same Python version (see ``corpus_python_version``).
    """
    digest = hashlib.sha256()
    for doc in iter_demo_documents(part):
        for field in (doc.doc_id, doc.text):
            data = field.encode()
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)
    return digest.hexdigest()


def corpus_python_version() -> str:
    """The interpreter whose standard library the corpus (and its fingerprint) comes from."""
    return f"{platform.python_implementation()} {platform.python_version()}"
