"""Turn a `--model` argument into a running TransformerBridge, whatever its source.

Tried in order: the bundled demo models, a local directory (labeller-native or Hugging Face
format), a legacy TransformerLens toy model name (tl_legacy source), a Hugging Face hub name.
"""

from __future__ import annotations

import gc
import hashlib
import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from labeller.demo import DEMO_MODEL_NAMES, demo_model_path
from labeller.errors import UserError
from labeller.model.native_dir import is_native_model_dir, load_native_model
from labeller.records import ModelRecord

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

GELU_HOOK = "blocks.{layer}.mlp.hook_post"
# SoLU-LN: the neuron is the activation after SoLU and before the LayerNorm that follows it.
SOLU_LN_HOOK = "blocks.{layer}.mlp.ln.hook_in"


def resolve_device(device: str) -> torch.device:
    if device != "auto":
        try:
            resolved = torch.device(device)
        except RuntimeError:
            raise UserError(
                f"unknown --device {device!r}; use auto, cpu, cuda, cuda:N or mps"
            ) from None
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu")
        return resolved
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


@dataclass
class LoadedModel:
    """A model ready for the scan and trace: the bridge plus the facts both must agree on."""

    name: str
    source: str
    bridge: Any
    device: torch.device
    # each token id's string once decoded: a scan's windows repeat a few thousand tokens
    _token_texts: dict[int, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def tokenizer(self) -> Any:
        return self.bridge.tokenizer

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def d_mlp(self) -> int:
        return int(self.bridge.cfg.d_mlp)

    @property
    def act_fn(self) -> str:
        return str(self.bridge.cfg.act_fn or "unknown")

    @property
    def neuron_hook_template(self) -> str:
        probe = SOLU_LN_HOOK.format(layer=0)
        return SOLU_LN_HOOK if probe in self.bridge.hook_dict else GELU_HOOK

    def neuron_hook(self, layer: int) -> str:
        return self.neuron_hook_template.format(layer=layer)

    @property
    def bos_id(self) -> int | None:
        """Every model input starts with BOS when the tokenizer has one, in scan and trace alike."""
        return self.tokenizer.bos_token_id

    @property
    def context_limit(self) -> int:
        """Most text tokens one input may hold (the context minus the BOS the inputs start with)."""
        return int(self.bridge.cfg.n_ctx) - (1 if self.bos_id is not None else 0)

    @property
    def pad_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, self.bos_id, self.tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    def mlp_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer's W_in [d_model, d_mlp] and W_out [d_mlp, d_model]. (The bridge's W_in
        and W_out stack every layer's on each access: for GPT-2 XL, 2 GB copied per layer.)"""
        mlp = self.bridge.blocks[layer].mlp
        return mlp.W_in, mlp.W_out

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_strings(self, ids: list[int]) -> list[str]:
        """Each token on its own, byte tokens that are not whole characters as `<0xNN>`."""
        known = self._token_texts
        try:
            return list(map(known.__getitem__, ids))  # a scan looks up every window's tokens
        except KeyError:
            from labeller.model.tokens import token_text

            for i in ids:
                if i not in known:
                    known[i] = token_text(self.tokenizer, i)
            return list(map(known.__getitem__, ids))

    def record(self) -> ModelRecord:
        cfg = self.bridge.cfg
        return ModelRecord(
            name=self.name,
            source=self.source,
            n_layers=self.n_layers,
            d_mlp=self.d_mlp,
            d_model=int(cfg.d_model),
            d_vocab=int(cfg.d_vocab),
            act_fn=self.act_fn,
            neuron_hook=self.neuron_hook_template,
            weights_fingerprint=self.weights_fingerprint(),
        )

    def weights_fingerprint(self) -> str:
        """sha256 over every parameter's name, shape and value rounded to bfloat16, so an export
        can be matched to the model it came from; the rounding makes a float32 and a float16
        load of the same checkpoint agree."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.bridge.state_dict().items()):
            values = tensor.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16)
            digest.update(f"{name}:{tuple(values.shape)}\n".encode())
            digest.update(values.numpy().tobytes())
        return f"sha256:{digest.hexdigest()}"

    def check_layers(self, layers: list[int], flag: str = "--layers") -> None:
        bad = [layer for layer in layers if not 0 <= layer < self.n_layers]
        if bad:
            raise UserError(
                f"{self.name} has layers 0-{self.n_layers - 1}; {flag} asked for {bad[0]}"
            )


def load_model(spec: str, device: str = "auto", dtype: str = "float32") -> LoadedModel:
    with _collector_paused():
        return _load_model(spec, device, dtype)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a model loads: importing transformer_lens
    and transformers makes millions of long-lived objects, and the full collections they set
    off took 0.88-1.05 s before a 4-layer model was loaded (0.30-0.37 s with the collector
    paused, torch's import and the first collection after included). Reference counting
    frees memory as usual."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load_model(spec: str, device: str, dtype: str) -> LoadedModel:
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    tried: list[str] = []

    if spec in DEMO_MODEL_NAMES:
        bridge = load_native_model(demo_model_path(spec), torch_device, torch_dtype, spec)
        return _loaded(spec, "demo", bridge, torch_device)
    tried.append("bundled demo model")

    path = Path(spec).expanduser()
    if path.is_dir():
        if is_native_model_dir(path):
            kind, source = "labeller-native", "native-dir"
            load = partial(load_native_model, path, torch_device, torch_dtype, spec)
        elif (path / "config.json").exists():
            kind, source = "Hugging Face", "hf-dir"
            load = partial(_boot_hf, spec, torch_device, torch_dtype)
        else:
            raise UserError(
                f"{path} is a directory but holds neither labeller_model.json nor a Hugging Face "
                "config.json; point --model at a model directory"
            )
        try:
            bridge = load()
        except Exception as exc:  # missing, truncated or malformed files raise many types
            raise UserError(
                f"{path} is not a loadable {kind} model directory ({_reason(exc)}); "
                "check that its config, weights and tokenizer files are complete"
            ) from None
        return _loaded(spec, source, bridge, torch_device)
    if spec.startswith(("/", "./", "../", "~", ".\\")) or spec.count("/") > 1:
        raise UserError(f"no model directory at {path}; check the path given to --model")
    tried.append("local directory")

    from transformer_lens.model_bridge.sources.tl_legacy import TL_LEGACY_PREFIXES, boot
    from transformer_lens.supported_models import get_official_model_name

    try:
        official = get_official_model_name(spec)
    except (ValueError, KeyError):
        official = spec
    if official.startswith(TL_LEGACY_PREFIXES):
        tried.append(f"TransformerLens legacy {official}")
        try:
            with hub_access(official):
                bridge = boot(official, device=torch_device, dtype=torch_dtype)
        except UserError:
            raise
        except Exception as exc:  # hub and network errors come in many types
            raise UserError(_not_loaded(spec, tried, exc)) from None
        return _loaded(spec, "tl-legacy", bridge, torch_device)

    tried.append(f"Hugging Face hub {official}")
    try:
        with hub_access(official):
            bridge = _boot_hf(official, torch_device, torch_dtype)
    except UserError:
        raise
    except Exception as exc:  # hub and network errors come in many types
        raise UserError(_not_loaded(spec, tried, exc)) from None
    return _loaded(spec, "hf", bridge, torch_device)


HUB_PROBE_TIMEOUT_S = 5.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")


@contextmanager
def hub_access(name: str) -> Iterator[None]:
    """Without a network the hub client retries for about 30 s, printing a warning per retry.
    Probe the hub first: if it cannot be reached, a cached model loads quietly from the cache and
    an uncached one is one error at once. Behind a proxy the probe is skipped (the client knows
    the proxy, a bare socket does not)."""
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE or any(os.environ.get(v) for v in PROXY_VARIABLES):
        yield
        return
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "", port), HUB_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise UserError(
                f"cannot reach the Hugging Face hub at {constants.ENDPOINT} to download {name} "
                f"({exc.strerror or exc}) and it is not in the local cache; check the network, "
                "or pass a local model directory to --model"
            ) from None
        constants.HF_HUB_OFFLINE = True  # read at call time by the hub client and transformers
        try:
            yield
        finally:
            constants.HF_HUB_OFFLINE = False
        return
    yield


def _boot_hf(name: str, device: torch.device, dtype: torch.dtype) -> Any:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformerBridge.boot_transformers(name, device=device, dtype=dtype)


def _loaded(name: str, source: str, bridge: Any, device: torch.device) -> LoadedModel:
    bridge.eval()
    model = LoadedModel(name=name, source=source, bridge=bridge, device=device)
    # a Hugging Face folder without tokenizer files loads an empty tokenizer that reads no text
    if model.tokenizer is None or not model.encode("text"):
        raise UserError(
            f"{name} has no tokenizer; labeller needs one to read text (add the tokenizer files)"
        )
    return model


def _reason(exc: Exception) -> str:
    """An exception's first line, short enough for a one-line error."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return reason[:200]


def _not_loaded(spec: str, tried: list[str], exc: Exception) -> str:
    reason = _reason(exc)
    return (
        f"could not load model {spec!r}: tried {', '.join(tried)} ({reason}); "
        "check the name, or pass a local model directory"
    )
