"""The demo tokenizer: deterministic, GPT-2-like special token, lossless round trip."""

import pytest
from tokenizers import Tokenizer

from labeller.demo.corpus import iter_demo_documents
from labeller.demo.tokenizer import END_OF_TEXT, as_hf_tokenizer, train_demo_tokenizer

SMALL_VOCAB = 512


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_demo_tokenizer(SMALL_VOCAB)


def test_training_is_deterministic(tokenizer: Tokenizer) -> None:
    assert train_demo_tokenizer(SMALL_VOCAB).to_str() == tokenizer.to_str()
    assert tokenizer.get_vocab_size() == SMALL_VOCAB


def test_end_of_text_is_id_zero_and_every_special_role(tokenizer: Tokenizer) -> None:
    hf = as_hf_tokenizer(tokenizer)
    assert tokenizer.token_to_id(END_OF_TEXT) == 0
    assert hf.bos_token_id == hf.eos_token_id == hf.pad_token_id == hf.unk_token_id == 0
    # The wrapper adds BOS itself: that is how TransformerLens 4 prepends it.
    assert hf("x = 1").input_ids[0] == 0


def test_round_trips_documents_and_arbitrary_unicode(tokenizer: Tokenizer) -> None:
    hf = as_hf_tokenizer(tokenizer)
    documents = [doc.text for doc in iter_demo_documents("heldout")][:5]
    texts = [*documents, "naïve café ☃ 日本語\t\r\n  trailing  ", ""]
    for text in texts:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
        assert hf.decode(hf(text).input_ids, skip_special_tokens=True) == text
