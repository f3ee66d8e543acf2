"""The shipped demo models load offline, are the promised pair, and beat the unigram baseline."""

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from labeller.demo import DEMO_MODEL_NAMES, DEMO_MODELS_DIR, demo_model_path
from labeller.demo.corpus import corpus_python_version, demo_corpus_fingerprint
from labeller.demo.train import DEMO_MODELS, demo_model_config, encode_windows, model_loss
from labeller.model.native_dir import (
    TOKENIZER_FILE,
    is_native_model_dir,
    load_native_model,
    native_model_metadata,
)

# About 4k held-out tokens: enough to tell a trained model from a unigram one, fast on a CPU.
EVAL_WINDOWS = 64


def test_demo_assets_are_small_enough_to_ship() -> None:
    size = sum(path.stat().st_size for path in DEMO_MODELS_DIR.rglob("*") if path.is_file())
    assert size <= 25 * 1024 * 1024
    assert all(is_native_model_dir(demo_model_path(name)) for name in DEMO_MODEL_NAMES)


def test_demo_model_path_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="demo-gelu-1l"):
        demo_model_path("gpt2")


def test_pair_shares_tokenizer_and_training_facts() -> None:
    gelu, solu = (demo_model_path(name) for name in DEMO_MODEL_NAMES)
    assert (gelu / TOKENIZER_FILE).read_bytes() == (solu / TOKENIZER_FILE).read_bytes()
    gelu_meta = native_model_metadata(gelu)["metadata"]
    solu_meta = native_model_metadata(solu)["metadata"]
    for key in ("corpus_fingerprint", "seed", "train_steps", "tokens_trained", "heldout_tokens"):
        assert gelu_meta[key] == solu_meta[key]


def test_pair_starts_from_identical_weights() -> None:
    """Same seed, same init wherever shapes agree; SoLU only adds its mid-MLP LayerNorm."""
    from transformer_lens.model_bridge.sources.native import boot

    gelu = boot(demo_model_config("gelu", 512, seed=3)).state_dict()
    solu = boot(demo_model_config("solu_ln", 512, seed=3)).state_dict()
    assert set(solu) - set(gelu) == {"blocks.0.mlp.ln.weight", "blocks.0.mlp.ln.bias"}
    assert all(torch.equal(gelu[key], solu[key]) for key in gelu)


def test_shipped_models_were_trained_on_this_corpus() -> None:
    meta = native_model_metadata(demo_model_path("demo-gelu-1l"))["metadata"]
    if meta["corpus_python_version"] != corpus_python_version():
        pytest.skip(f"demo corpus was built with {meta['corpus_python_version']}")
    assert demo_corpus_fingerprint() == meta["corpus_fingerprint"]


@pytest.mark.parametrize("name", DEMO_MODEL_NAMES)
def test_demo_model_loads_and_beats_unigram_baseline(name: str) -> None:
    path = demo_model_path(name)
    bridge = load_native_model(path)
    meta = native_model_metadata(path)["metadata"]
    act_fn, neuron_hook = DEMO_MODELS[name]
    assert bridge.cfg.n_layers == 1
    assert bridge.cfg.act_fn == act_fn == meta["act_fn"]
    assert meta["neuron_hook"] == neuron_hook

    tokens = bridge.to_tokens("def parse(self, text):\n    return text.split()")
    assert tokens[0, 0].item() == 0
    assert (tokens[0, 1:] != 0).all()
    assert bridge.to_string(tokens[0, 1:]) == "def parse(self, text):\n    return text.split()"
    _, cache = bridge.run_with_cache(tokens, names_filter=neuron_hook)
    assert cache[neuron_hook].shape == (1, tokens.shape[1], bridge.cfg.d_mlp)

    tokenizer = Tokenizer.from_file(str(Path(path) / TOKENIZER_FILE))
    inputs, targets = encode_windows(tokenizer, "heldout")
    loss = model_loss(bridge, inputs[:EVAL_WINDOWS], targets[:EVAL_WINDOWS])
    assert loss < meta["unigram_heldout_loss"] - 1.0
    assert meta["heldout_loss"] < meta["unigram_heldout_loss"] - 1.0
