"""Native model directories: a save/load round trip must give back the same model."""

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.sources.native import boot
from transformers import PreTrainedTokenizerFast

from labeller.model.native_dir import (
    MODEL_JSON,
    hf_tokenizer_for_bridge,
    is_native_model_dir,
    load_native_model,
    native_model_metadata,
    save_native_model,
)

TEXTS = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog."] * 20
SPECIAL = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TEXTS, trainer=trainer)
    return hf_tokenizer_for_bridge(tokenizer, SPECIAL, "tiny")


def tiny_model(act_fn: str) -> TransformerBridge:
    hf = tiny_tokenizer()
    config = TransformerBridgeConfig(
        d_model=32,
        n_layers=1,
        d_mlp=64,
        d_head=8,
        n_heads=4,
        n_ctx=32,
        d_vocab=len(hf),
        act_fn=act_fn,
        normalization_type="LN",
        positional_embedding_type="standard",
        architecture="TransformerLensNative",
        seed=1,
    )
    return boot(config, tokenizer=hf, model_name="tiny")


@pytest.mark.parametrize("act_fn", ["gelu", "solu_ln"])
def test_round_trip_gives_identical_logits(tmp_path: Path, act_fn: str) -> None:
    bridge = tiny_model(act_fn)
    save_native_model(
        bridge, bridge.tokenizer, tmp_path, {"note": "hi"}, storage_dtype=torch.float32
    )
    loaded = load_native_model(tmp_path)

    assert is_native_model_dir(tmp_path)
    assert native_model_metadata(tmp_path)["metadata"] == {"note": "hi"}
    assert loaded.cfg.act_fn == act_fn
    assert loaded.cfg.model_name == tmp_path.name
    tokens = bridge.to_tokens(TEXTS[0])
    assert torch.equal(loaded.to_tokens(TEXTS[0]), tokens)
    assert tokens[0, 0].item() == 0 and (tokens[0, 1:] != 0).all()
    assert loaded.to_string(tokens[0, 1:]) == TEXTS[0]
    with torch.inference_mode():
        assert torch.equal(loaded(tokens), bridge(tokens))


def test_default_float16_storage_rounds_weights_only(tmp_path: Path) -> None:
    bridge = tiny_model("gelu")
    save_native_model(bridge, bridge.tokenizer, tmp_path, {})
    loaded = load_native_model(tmp_path, model_name="custom")

    assert loaded.cfg.model_name == "custom"
    original = bridge.state_dict()
    for key, value in loaded.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, original[key].half().float()), key


def test_loading_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    bridge = tiny_model("gelu")
    save_native_model(bridge, bridge.tokenizer, tmp_path, {})
    state = torch.random.get_rng_state()
    load_native_model(tmp_path)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_not_a_native_dir(tmp_path: Path) -> None:
    assert not is_native_model_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match=MODEL_JSON):
        native_model_metadata(tmp_path)


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    bridge = tiny_model("gelu")
    save_native_model(bridge, bridge.tokenizer, tmp_path, {})
    document = json.loads((tmp_path / MODEL_JSON).read_text())
    document["format_version"] = 99
    (tmp_path / MODEL_JSON).write_text(json.dumps(document))
    with pytest.raises(ValueError, match="format_version"):
        load_native_model(tmp_path)


def test_weights_get_the_same_file_mode_as_the_other_files(tiny_model_dir):
    """safetensors writes 0600; a model folder others read must not be owner-only."""
    weights = (tiny_model_dir / "model.safetensors").stat().st_mode & 0o777
    assert weights == (tiny_model_dir / "tokenizer.json").stat().st_mode & 0o777
