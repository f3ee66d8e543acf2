"""Shared fixtures: one tiny model and corpus built once per run (no network), copied per test."""

from __future__ import annotations

import os

# One thread per test process: the suite runs under xdist on 2 cores, and oversubscribed OpenMP
# threads slow tiny matmuls a hundredfold.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import pytest
from builders import synthetic_documents


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer SoLU-LN native model with a byte-level BPE tokenizer, random weights, seed 0."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources.native import boot

    from labeller.model.native_dir import hf_tokenizer_for_bridge, save_native_model

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_documents(200, seed=1), trainer)
    special = dict.fromkeys(("bos_token", "eos_token", "pad_token"), "<|endoftext|>")
    hf_tok = hf_tokenizer_for_bridge(tok, special, "tiny")
    cfg = TransformerBridgeConfig(
        d_model=32,
        n_layers=2,
        d_mlp=48,
        d_head=16,
        n_heads=2,
        n_ctx=80,
        d_vocab=tok.get_vocab_size(),
        act_fn="solu_ln",
        normalization_type="LN",
        positional_embedding_type="standard",
        architecture="TransformerLensNative",
        seed=0,
    )
    bridge = boot(cfg, tokenizer=hf_tok, model_name="tiny")
    path = tmp_path_factory.mktemp("models") / "tiny-solu-2l"
    save_native_model(bridge, hf_tok, path, {"purpose": "tests"}, storage_dtype=torch.float32)
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .jsonl corpus of 60 short synthetic documents."""
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with path.open("w") as handle:
        for text in synthetic_documents(60, seed=2):
            handle.write(json.dumps({"text": text}) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    from labeller.model.loading import load_model

    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A 2-layer GPT-2 saved as a Hugging Face model directory (what users download)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    special = "<|endoftext|>"
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=special, eos_token=special, pad_token=special
    )
    cfg = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        n_positions=80,
        vocab_size=tok.get_vocab_size(),
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    GPT2LMHeadModel(cfg).save_pretrained(path)
    hf_tok.save_pretrained(path)
    return path
