"""Reading a corpus: long documents tokenized in pieces give the windows of whole-document
tokenization; reading ahead on a thread keeps the order and the errors of reading in turn."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from builders import synthetic_documents

from labeller.corpus import encode_in_pieces, iter_documents, iter_windows, read_ahead


def _awkward_text() -> str:
    """Synthetic lines joined by every kind of break: plain, blank lines, trailing and leading
    spaces, CRLF, tabs, non-ASCII and a special-token string."""
    joins = ["\n", "\n\n", " \n", "\n ", "\r\n", "\n\t", "\n\n\n", "\n<|endoftext|>", "\n"]
    lines = synthetic_documents(400, seed=5)
    parts = []
    for i, line in enumerate(lines):
        parts.append(line + (" façade — 東京" if i % 7 == 0 else ""))
        parts.append(joins[i % len(joins)])
    return "".join(parts)


@pytest.fixture(scope="module")
def encode():
    """A byte-level BPE (as GPT-2's) trained on the awkward text itself, so it has merges of
    whitespace runs and line breaks: the ones a careless cut would change."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_awkward_text()], trainer)
    return lambda text: tok.encode(text, add_special_tokens=False).ids


def _windows(path: Path, encode, ctx: int, chunk_chars: int) -> list[tuple[str, int, list[int]]]:
    return [
        (w.document, w.offset, w.token_ids)
        for w in iter_windows(iter_documents(str(path)), encode, ctx, chunk_chars=chunk_chars)
    ]


@pytest.mark.parametrize("ctx", [7, 64])
def test_pieces_give_the_windows_of_whole_file_tokenization(encode, tmp_path, ctx):
    path = tmp_path / "book.txt"
    path.write_text(_awkward_text(), encoding="utf-8")
    text = path.read_bytes().decode("utf-8")  # as the corpus reads it: CRLF kept
    whole = encode(text)
    expected = [(str(path), o, whole[o : o + ctx]) for o in range(0, len(whole), ctx)]
    pieces = list(encode_in_pieces(text, encode, chunk_chars=500))
    assert len(pieces) > 10  # it really was cut
    assert _windows(path, encode, ctx, chunk_chars=500) == expected


def test_tokenizer_that_fails_the_cut_check_gets_the_text_whole(tmp_path):
    """A tokenizer that prefixes every call (as a sentencepiece one adds '▁') would change the
    tokens at a cut: the check catches it and the rest is encoded whole."""

    def prefixed(text: str) -> list[int]:
        return [0, *(ord(c) for c in text)]

    text = "\n".join(f"line {i} of the book" for i in range(2000))
    assert list(encode_in_pieces(text, prefixed, chunk_chars=300)) == [prefixed(text)]
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    whole = prefixed(text)
    assert [w[2] for w in _windows(path, prefixed, 64, chunk_chars=300)] == [
        whole[o : o + 64] for o in range(0, len(whole), 64)
    ]


def test_short_documents_are_encoded_in_one_call(tiny_model):
    calls: list[str] = []

    def counting(text: str) -> list[int]:
        calls.append(text)
        return tiny_model.encode(text)

    text = "a short document\nof two lines"
    assert list(encode_in_pieces(text, counting, chunk_chars=500)) == [tiny_model.encode(text)]
    assert calls == [text]


def test_read_ahead_keeps_order_and_raises_where_the_error_came():
    def source():
        yield from range(500)
        raise ValueError("line 501 is not JSON")

    got = []
    with pytest.raises(ValueError, match="line 501"):
        for item in read_ahead(source(), depth=8):
            got.append(item)
    assert got == list(range(500))


def test_closing_read_ahead_stops_the_reader_and_closes_the_source():
    closed = threading.Event()

    def endless():
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    ahead = read_ahead(endless(), depth=4)
    assert [next(ahead) for _ in range(10)] == list(range(10))
    ahead.close()
    assert closed.is_set()
    assert not any(t.name == "labeller-read-ahead" for t in threading.enumerate())
