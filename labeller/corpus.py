"""Corpora: documents streamed from local files, Hugging Face datasets or the demo corpus,
cut into token windows that never span two documents."""

from __future__ import annotations

import itertools
import json
import logging
import queue
import re
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from labeller.errors import UserError

T = TypeVar("T")

log = logging.getLogger("labeller")

LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")


MAX_SUBSETS = 16  # a subset field with more values is an id, not a split of the corpus


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    subset: str | None = None


@dataclass(frozen=True)
class Window:
    """Up to ctx tokens of one document, starting `offset` tokens into it."""

    document: str
    offset: int
    token_ids: list[int]
    subset: str | None = None


def parse_dataset_specs(specs: tuple[str, ...] | list[str]) -> tuple[str, dict[str, str]]:
    """`--dataset` values as (dataset, subsets): one plain spec is the dataset itself; named
    ones (`code=PATH`) are subsets, and the dataset names them all ("code=A prose=B")."""
    if not specs:
        raise UserError("pass --dataset: demo, a corpus file or folder, or NAME=PATH per subset")
    named = [spec for spec in specs if _subset_name(spec) is not None]
    if len(specs) == 1 and not named:
        check_dataset_spec(specs[0])
        return specs[0], {}
    if len(named) != len(specs):
        raise UserError(
            "several --dataset values must each name a subset: --dataset code=PATH "
            "--dataset prose=PATH"
        )
    subsets: dict[str, str] = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        if name in subsets:
            raise UserError(f"subset {name!r} is named twice; give each --dataset its own name")
        check_dataset_spec(path)
        subsets[name] = path
    return " ".join(f"{name}={path}" for name, path in subsets.items()), subsets


def _subset_name(spec: str) -> str | None:
    """`code` in `code=PATH`; None for a plain spec, including an existing path with '='."""
    if Path(spec).expanduser().exists():
        return None
    name, sep, rest = spec.partition("=")
    if sep and rest and name.isidentifier():
        return name
    return None


def check_dataset_spec(spec: str) -> None:
    """Fail fast on a local corpus path that does not exist, before any model loads."""
    if spec == "demo" or Path(spec).expanduser().exists():
        return
    if Path(spec).suffix in LOCAL_SUFFIXES or spec.startswith((".", "/", "~")):
        raise UserError(f"no corpus at {spec}; pass an existing file or folder, or `demo`")


def iter_corpus(
    dataset: str,
    subsets: dict[str, str],
    text_field: str = "text",
    subset_field: str | None = None,
) -> Iterator[Document]:
    """A scan's documents: named subsets taken in turn, one document each (so a token limit
    reaches every subset), or the one dataset; at most MAX_SUBSETS distinct subsets."""
    documents: Iterator[Document]
    if subsets:
        streams = [
            _tagged(iter_documents(spec, text_field, subset_field), name)
            for name, spec in subsets.items()
        ]
        documents = (
            doc for group in itertools.zip_longest(*streams) for doc in group if doc is not None
        )
    else:
        documents = iter_documents(dataset, text_field, subset_field)
    seen: set[str] = set()
    for doc in documents:
        if doc.subset is not None and doc.subset not in seen:
            seen.add(doc.subset)
            if len(seen) > MAX_SUBSETS:
                raise UserError(
                    f"more than {MAX_SUBSETS} corpus subsets; --subset-field must name a field "
                    "with a few values (e.g. source), not an id"
                )
        yield doc


def _tagged(documents: Iterator[Document], subset: str) -> Iterator[Document]:
    for doc in documents:
        yield Document(doc.doc_id, doc.text, subset)


def iter_documents(
    spec: str, text_field: str = "text", subset_field: str | None = None
) -> Iterator[Document]:
    """Stream the documents of `--dataset`: `demo` (subsets code and prose), a file or folder,
    or a HF dataset name; `subset_field` names a .jsonl/.parquet/HF field giving the subset."""
    check_dataset_spec(spec)
    if spec == "demo":
        from labeller.demo.corpus import iter_demo_documents

        for doc in iter_demo_documents("all"):
            yield Document(doc.doc_id, doc.text, doc.subset)
        return
    path = Path(spec).expanduser()
    if path.exists():
        yield from _iter_local(path, text_field, subset_field)
    else:
        yield from _iter_hf_dataset(spec, text_field, subset_field)


def _subset_of(value: object, field: str, where: str) -> str:
    """A record's subset field as a name: a non-empty string or an integer."""
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise UserError(f"{where}: no string field {field!r}; set --subset-field")
    return str(value)


def _iter_local(path: Path, text_field: str, subset_field: str | None) -> Iterator[Document]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
        if not files:
            raise UserError(f"{path} holds no .txt, .jsonl or .parquet files")
    elif path.suffix in LOCAL_SUFFIXES:
        files = [path]
    else:
        raise UserError(f"{path}: unsupported corpus file; use .txt, .jsonl or .parquet")
    for file in files:
        name = str(file)
        if file.suffix == ".txt":
            if subset_field is not None:
                raise UserError(f"{file}: a .txt file has no fields; drop --subset-field")
            yield Document(name, _decode(file.read_bytes(), name))
        elif file.suffix == ".jsonl":
            yield from _iter_jsonl(file, text_field, subset_field)
        else:
            yield from _iter_parquet(file, text_field, subset_field)


def _decode(raw: bytes, where: str) -> str:
    text = raw.decode("utf-8", errors="replace")
    if "\ufffd" in text and "\ufffd".encode() not in raw:
        log.warning("%s: undecodable bytes replaced with U+FFFD", where)
    return text


def _iter_jsonl(file: Path, text_field: str, subset_field: str | None) -> Iterator[Document]:
    with file.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{file}:{number}"
            try:
                record = json.loads(_decode(raw, where))
            except json.JSONDecodeError as exc:
                raise UserError(f"{where}: not a JSON line ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise UserError(f"{where}: no string field {text_field!r}; set --text-field")
            subset = None
            if subset_field is not None:
                subset = _subset_of(record.get(subset_field), subset_field, where)
            yield Document(where, record[text_field], subset)


def _iter_parquet(file: Path, text_field: str, subset_field: str | None) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(
            "reading .parquet needs pyarrow: pip install 'labeller[datasets]'"
        ) from None
    try:
        parquet = pq.ParquetFile(file)
    except Exception as exc:  # pyarrow raises several types for bad files
        raise UserError(f"{file}: not a readable parquet file ({exc})") from None
    columns = [text_field] if subset_field is None else [text_field, subset_field]
    for column in columns:
        if column not in parquet.schema_arrow.names:
            flag = "--text-field" if column == text_field else "--subset-field"
            raise UserError(f"{file}: no column {column!r}; set {flag}")
    row = 0
    for batch in parquet.iter_batches(columns=columns, batch_size=1024):
        texts = batch.column(0).to_pylist()
        subsets = batch.column(1).to_pylist() if subset_field else [None] * len(texts)
        for text, value in zip(texts, subsets, strict=True):
            if isinstance(text, str):
                where = f"{file}:{row}"
                subset = None
                if subset_field is not None:
                    subset = _subset_of(value, subset_field, where)
                yield Document(where, text, subset)
            row += 1


def _iter_hf_dataset(name: str, text_field: str, subset_field: str | None) -> Iterator[Document]:
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"{name!r} is not a local path; Hugging Face datasets need "
            "pip install 'labeller[datasets]'"
        ) from None
    try:
        dataset = datasets.load_dataset(name, split="train", streaming=True)
    except Exception as exc:  # hub and network errors come in many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"could not open dataset {name!r}: not a local path, and Hugging Face said: "
            f"{reason[:200]}"
        ) from None
    for index, record in enumerate(dataset):
        text = record.get(text_field)
        if not isinstance(text, str):
            raise UserError(
                f"dataset {name!r} has no string field {text_field!r}; set --text-field"
            )
        subset = None
        if subset_field is not None:
            subset = _subset_of(record.get(subset_field), subset_field, f"dataset {name!r}")
        yield Document(f"{name}:{index}", text, subset)


CHUNK_CHARS = 1 << 16  # a long document is tokenized in pieces of about this many characters
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")  # after a line break between two non-space chars
_PROBE_CHARS = 256


def iter_windows(
    documents: Iterator[Document],
    encode: Callable[[str], list[int]],
    ctx: int,
    chunk_chars: int = CHUNK_CHARS,
) -> Iterator[Window]:
    """Consecutive ctx-token windows per document; a document's last window may be shorter.

    A long document (one .txt file) is tokenized piece by piece, so the first window comes
    after one piece, not after the whole file: the same tokens as encoding it whole (see
    encode_in_pieces)."""
    for doc in documents:
        pending: list[int] = []
        start = offset = 0
        for ids in encode_in_pieces(doc.text, encode, chunk_chars):
            pending = pending[start:] + ids
            start = 0
            while len(pending) - start >= ctx:
                yield Window(doc.doc_id, offset, pending[start : start + ctx], doc.subset)
                start += ctx
                offset += ctx
        if len(pending) > start:
            yield Window(doc.doc_id, offset, pending[start:], doc.subset)


def encode_in_pieces(
    text: str, encode: Callable[[str], list[int]], chunk_chars: int = CHUNK_CHARS
) -> Iterator[list[int]]:
    """The tokens of `text` in pieces whose concatenation is `encode(text)`.

    Pieces end at a line break with a non-space character on both sides: byte-level BPE
    tokenizers (GPT-2, Pythia, the demo) never merge across one, as their pre-tokenizer cuts
    there whatever the text around it. Each cut is checked on the text around it (up to 256
    characters each side encoded together and apart); a tokenizer that fails the check (one that
    adds a prefix space to every call, or merges a line break into the next word) gets the
    rest of the text encoded whole, so the tokens never differ, only the first window is later.
    """
    at = 0
    while len(text) - at > 2 * chunk_chars:
        found = _SAFE_CUT.search(text, at + chunk_chars)
        if found is None:
            break
        cut = found.start()
        before = text[max(at, cut - _PROBE_CHARS) : cut]
        after = text[cut : cut + _PROBE_CHARS]
        if encode(before + after) != encode(before) + encode(after):
            break
        yield encode(text[at:cut])
        at = cut
    yield encode(text[at:])


def read_ahead(items: Iterator[T], depth: int = 256) -> Generator[T, None, None]:
    """The items, read by a background thread up to `depth` ahead: a GPU scan's reading and
    tokenizing then runs beside the model instead of between its batches (on CPU it would take
    the cores, and the GIL, from the model). An error is raised here, where the item that failed
    would have come; closing this generator stops the reading and closes `items`."""
    ahead: queue.Queue[tuple[bool, T | BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, T | BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                ahead.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    break
            else:
                put((False, None))
        except BaseException as exc:  # handed to the reader, raised there
            put((False, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=read, name="labeller-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            more, value = ahead.get()
            if isinstance(value, BaseException):
                raise value
            if not more:
                return
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        # The reader stops after the item it is reading; a stalled read (a network stream) is
        # not waited for past a few seconds: the thread is a daemon.
        thread.join(timeout=5.0)
