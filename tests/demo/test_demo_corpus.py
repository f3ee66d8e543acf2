"""The demo corpus is a pure function of the interpreter: it must rebuild identically."""

from labeller.demo.corpus import (
    HELDOUT_PERCENT,
    demo_corpus_fingerprint,
    is_heldout,
    iter_demo_documents,
)


def test_corpus_rebuilds_identically() -> None:
    first = [(doc.doc_id, doc.text) for doc in iter_demo_documents()]
    second = [(doc.doc_id, doc.text) for doc in iter_demo_documents()]
    assert first == second
    assert demo_corpus_fingerprint() == demo_corpus_fingerprint()
    assert demo_corpus_fingerprint("train") != demo_corpus_fingerprint("heldout")


def test_train_and_heldout_partition_the_corpus() -> None:
    all_ids = [doc.doc_id for doc in iter_demo_documents()]
    train_ids = [doc.doc_id for doc in iter_demo_documents("train")]
    heldout_ids = [doc.doc_id for doc in iter_demo_documents("heldout")]
    assert len(set(all_ids)) == len(all_ids)
    assert not set(train_ids) & set(heldout_ids)
    assert sorted(train_ids + heldout_ids) == sorted(all_ids)
    # Each part keeps the corpus order.
    assert train_ids == [doc_id for doc_id in all_ids if not is_heldout(doc_id)]
    share = 100 * len(heldout_ids) / len(all_ids)
    assert HELDOUT_PERCENT / 2 < share < HELDOUT_PERCENT * 2


def test_corpus_mixes_source_and_prose_from_the_start() -> None:
    docs = list(iter_demo_documents())
    total_chars = sum(len(doc.text) for doc in docs)
    assert 4_000_000 < total_chars < 12_000_000
    first = [doc.doc_id for doc in docs[:40]]
    assert any(doc_id.startswith("pydoc:") for doc_id in first)
    assert any(doc_id.startswith("stdlib:") for doc_id in first)
    assert first != sorted(first)


def test_corpus_leaves_out_tests_and_generated_tables() -> None:
    for doc in iter_demo_documents():
        if doc.doc_id.startswith("stdlib:"):
            parts = doc.doc_id.removeprefix("stdlib:").split("/")[:-1]
            assert not {"test", "tests", "idlelib", "lib2to3", "encodings"} & set(parts), doc.doc_id


def test_corpus_subsets_are_code_and_prose() -> None:
    from labeller.corpus import iter_documents

    subsets = {doc.doc_id.split(":")[0]: set() for doc in iter_demo_documents()}
    for doc in iter_documents("demo"):
        subsets[doc.doc_id.split(":")[0]].add(doc.subset)
    assert subsets == {"stdlib": {"code"}, "pydoc": {"prose"}}
