"""`train_demo_models` end to end on a tiny budget: it must write two loadable, trained models."""

from pathlib import Path

import pytest
import torch
from transformer_lens.model_bridge.sources.native import boot

from labeller.demo.train import (
    BATCH_SIZE,
    DEMO_MODELS,
    N_CTX,
    demo_model_config,
    train_demo_models,
)
from labeller.model.native_dir import load_native_model, native_model_metadata


@pytest.mark.slow
def test_tiny_training_run_writes_loadable_models(tmp_path: Path) -> None:
    vocab_size = 300
    result = train_demo_models(
        tmp_path, tokens=20 * BATCH_SIZE * N_CTX, seed=5, vocab_size=vocab_size, progress=False
    )

    assert result["train_steps"] == 20
    assert set(result["models"]) == set(DEMO_MODELS)
    initial = boot(demo_model_config("gelu", vocab_size, seed=5)).state_dict()
    for name, (act_fn, _) in DEMO_MODELS.items():
        path = tmp_path / name
        metadata = native_model_metadata(path)["metadata"]
        assert metadata["heldout_loss"] == result["models"][name]["heldout_loss"]
        assert metadata["unigram_heldout_loss"] == result["unigram_heldout_loss"]
        bridge = load_native_model(path)
        assert bridge.cfg.act_fn == act_fn
        assert bridge.cfg.d_vocab == vocab_size
        # Training went through the bridge, so the saved weights must have moved from init.
        trained = bridge.state_dict()["blocks.0.mlp.in.weight"]
        assert not torch.allclose(trained, initial["blocks.0.mlp.in.weight"], atol=1e-3)
        # 20 steps already beat a uniform guess over the vocabulary.
        assert metadata["heldout_loss"] < torch.log(torch.tensor(vocab_size)).item()
