"""Shared fixtures: one tiny model and corpus built once per run (no network), copied per test."""

from __future__ import annotations

import os

# One thread per test process: the suite runs under xdist on 2 cores, and oversubscribed OpenMP
# threads slow tiny matmuls a hundredfold.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import random
import shutil
from pathlib import Path

import pytest

WORDS = [
    *[
        "the",
        "neuron",
        "fires",
        "on",
        "def",
        "class",
        "return",
        "import",
        "from",
        "while",
        "for",
        "if",
        "else",
        "print",
        "self",
        "value",
    ],
    *[
        "list",
        "dict",
        "string",
        "token",
        "model",
        "layer",
        "activation",
        "window",
        "corpus",
        "python",
        "code",
        "text",
        "and",
    ],
    "of",
    "to",
]


def synthetic_documents(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        lines = []
        for _ in range(rng.randint(1, 12)):
            lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 14))))
        docs.append("\n".join(lines))
    return docs


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


@pytest.fixture()
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "catalogue.db"


@pytest.fixture()
def copy_of(tmp_path: Path):
    def copy(path: Path) -> Path:
        target = tmp_path / path.name
        shutil.copytree(path, target) if path.is_dir() else shutil.copy(path, target)
        return target

    return copy


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    from labeller.model.loading import load_model

    return load_model(str(tiny_model_dir), device="cpu")


def scan_params(model_dir: Path, corpus: Path, **overrides: object):
    from labeller.records import ScanParams

    values: dict[str, object] = {
        "model": str(model_dir),
        "dataset": str(corpus),
        "layers": [0, 1],
        "tokens": None,
        "ctx": 16,
        "top_k": 6,
        "random": 7,
        "seed": 0,
        "histogram_bins": 32,
    }
    values.update(overrides)
    return ScanParams(**values)


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
