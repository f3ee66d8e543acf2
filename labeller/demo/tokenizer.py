"""A small byte-level BPE tokenizer for the demo corpus, shaped like GPT-2's.

Byte-level BPE never meets an unknown character, so any text a user types in the annotator
tokenizes and decodes back exactly. ``<|endoftext|>`` (id 0) is the single special token and
serves as BOS, EOS and padding, as in GPT-2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from labeller.demo.corpus import iter_demo_documents
from labeller.model.native_dir import SPECIAL_TOKEN_ROLES, hf_tokenizer_for_bridge

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
DEMO_TOKENIZER_NAME = "labeller-demo-bpe"


def train_demo_tokenizer(vocab_size: int = 2048) -> Tokenizer:
    """Train the demo tokenizer on the train part of the demo corpus (never on held-out text).

    The BPE trainer is deterministic for a fixed input order, so one Python version always gets
    the same vocabulary. The full byte alphabet is seeded so that no byte is ever unknown.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(
        (doc.text for doc in iter_demo_documents("train")), trainer=trainer
    )
    return tokenizer


def as_hf_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap the demo tokenizer for TransformerLens: ``<|endoftext|>`` is BOS, EOS, pad and unk.

    The bridge reads ``bos_token_id`` / ``pad_token_id`` from the wrapper to prepend BOS and to
    pad batches, so all four roles point at the one special token, as in GPT-2.
    """
    roles = dict.fromkeys(SPECIAL_TOKEN_ROLES, END_OF_TEXT)
    return hf_tokenizer_for_bridge(tok, roles, DEMO_TOKENIZER_NAME)
