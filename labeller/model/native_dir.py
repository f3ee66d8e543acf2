"""A directory format for TransformerLens-native models, so small models load without HuggingFace.

A native model directory holds three files:

- ``labeller_model.json``: ``{"format_version", "config", "special_tokens", "metadata"}``, where
  ``config`` holds the ``TransformerBridgeConfig`` fields that rebuild the architecture and
  ``metadata`` is free-form (the demo models record their training facts and held-out loss there);
- ``model.safetensors``: the bridge's ``state_dict()`` (TransformerLens key names, float16 by
  default to keep shipped assets small);
- ``tokenizer.json``: the ``tokenizers`` serialisation of the tokenizer.

Importing this module is cheap: torch, transformers and TransformerLens load inside the functions
that need them, so commands that only read metadata stay fast.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

MODEL_JSON = "labeller_model.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1

# The TransformerBridgeConfig fields that determine a native model's architecture; everything
# else keeps its TransformerLens default on load.
CONFIG_FIELDS: tuple[str, ...] = (
    "d_model",
    "n_layers",
    "d_mlp",
    "d_head",
    "n_heads",
    "n_ctx",
    "d_vocab",
    "act_fn",
    "normalization_type",
    "positional_embedding_type",
)
SPECIAL_TOKEN_ROLES: tuple[str, ...] = ("bos_token", "eos_token", "pad_token", "unk_token")


def is_native_model_dir(path: Path) -> bool:
    """True iff ``path`` is a native model directory (it has a ``labeller_model.json``)."""
    return (Path(path) / MODEL_JSON).is_file()


def native_model_metadata(path: Path) -> dict[str, Any]:
    """The parsed ``labeller_model.json`` of a native model directory (no torch needed)."""
    path = Path(path)
    if not is_native_model_dir(path):
        raise FileNotFoundError(f"{path} is not a native model directory: no {MODEL_JSON} in it")
    data: dict[str, Any] = json.loads((path / MODEL_JSON).read_text(encoding="utf-8"))
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path / MODEL_JSON} has format_version {data.get('format_version')!r}; this "
            f"version of labeller reads {FORMAT_VERSION}. Upgrade labeller or re-save the model."
        )
    return data


def hf_tokenizer_for_bridge(
    tokenizer: Tokenizer, special_tokens: Mapping[str, str], name: str
) -> PreTrainedTokenizerFast:
    """Wrap a ``tokenizers.Tokenizer`` so that ``TransformerBridge`` accepts it as it is.

    TransformerLens 4.3 re-creates, via ``AutoTokenizer.from_pretrained(name_or_path)``, every
    tokenizer that does not add BOS itself, and fails with ``KeyError: 'name_or_path'`` on an
    in-memory one. Building it with ``add_bos_token=True`` (what TransformerLens wants anyway)
    and a ``name_or_path`` avoids both; ``bridge.to_tokens`` then yields exactly one BOS.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        name_or_path=name,
        add_bos_token="bos_token" in special_tokens,
        clean_up_tokenization_spaces=False,
        **special_tokens,
    )


def save_native_model(
    bridge: TransformerBridge,
    hf_tokenizer: PreTrainedTokenizerBase,
    path: Path,
    metadata: Mapping[str, Any],
    *,
    storage_dtype: torch.dtype | None = None,
) -> None:
    """Write ``bridge`` and its tokenizer as a native model directory at ``path``.

    Weights are stored as ``storage_dtype`` (float16 when None): half the size of float32, and
    the rounding error is far below what changes a neuron's top examples.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if storage_dtype is None else storage_dtype
    state = {
        key: value.detach().to(device="cpu", dtype=dtype).contiguous()
        for key, value in bridge.state_dict().items()
    }
    save_file(state, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    # safetensors creates the file owner-only (0600); give it the mode of every other file here
    umask = os.umask(0)
    os.umask(umask)
    (path / WEIGHTS_FILE).chmod(0o666 & ~umask)
    hf_tokenizer.backend_tokenizer.save(str(path / TOKENIZER_FILE))
    document = {
        "format_version": FORMAT_VERSION,
        "config": {field: getattr(bridge.cfg, field) for field in CONFIG_FIELDS},
        "special_tokens": {
            role: getattr(hf_tokenizer, role)
            for role in SPECIAL_TOKEN_ROLES
            if getattr(hf_tokenizer, role) is not None
        },
        "metadata": dict(metadata),
    }
    (path / MODEL_JSON).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def load_native_model(
    path: Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    model_name: str | None = None,
) -> TransformerBridge:
    """Rebuild the ``TransformerBridge`` saved in a native model directory, in eval mode.

    ``dtype`` defaults to float32 whatever the storage dtype, because CPU float16 matmuls are
    slow and hooks should see full-precision activations. ``model_name`` defaults to the
    directory's name.
    """
    import torch
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources.native import boot

    path = Path(path)
    document = native_model_metadata(path)
    name = model_name or path.name
    dtype = torch.float32 if dtype is None else dtype
    tokenizer = hf_tokenizer_for_bridge(
        Tokenizer.from_file(str(path / TOKENIZER_FILE)), document["special_tokens"], name
    )
    # A seed makes boot's throwaway random init leave the caller's global RNG untouched.
    config = TransformerBridgeConfig(
        **document["config"], architecture="TransformerLensNative", seed=0
    )
    bridge = boot(config, tokenizer=tokenizer, device=device, dtype=dtype, model_name=name)
    state = {key: value.to(dtype) for key, value in load_file(str(path / WEIGHTS_FILE)).items()}
    bridge.load_state_dict(state, strict=True)
    bridge.eval()
    return bridge
