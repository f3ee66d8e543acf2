"""Neuron activations for batches of token windows: the one forward pass scan and trace share."""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Callable, Sequence

import torch

from labeller.model.loading import LoadedModel

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)

HookList = Sequence[tuple[str, Callable[..., torch.Tensor | None]]]  # (hook name, function)


def batch_inputs(
    model: LoadedModel, windows: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded model input (BOS first when the tokenizer has one) and a text-token mask.

    Causal attention means right padding never changes the activations of real tokens.
    """
    prefix = [model.bos_id] if model.bos_id is not None else []
    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), len(prefix) + width), model.pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.bool)
    for row, window in enumerate(windows):
        ids[row, : len(prefix) + len(window)] = torch.tensor([*prefix, *window])
        mask[row, : len(window)] = True
    return ids.to(model.device), mask.to(model.device)


def neuron_activations(
    model: LoadedModel,
    input_ids: torch.Tensor,
    layers: Sequence[int],
    keep: bool = True,
    extra_hooks: HookList = (),
    to_end: bool = False,
) -> dict[int, torch.Tensor]:
    """Activations [batch, text tokens, d_mlp] per layer, float32, BOS position dropped.

    `keep=False` runs the same hooked forward pass but keeps nothing (the benchmark's baseline);
    `extra_hooks` run first, e.g. to perturb embeddings; `to_end` runs the whole model, for
    hooks on the final LayerNorm. Else the pass stops once every hook has run: what comes
    after (the last layer's output weights, the unembedding) would be computed for nothing.
    """
    captured: dict[int, torch.Tensor] = {}
    skip = 1 if model.bos_id is not None else 0

    def capture(layer: int) -> Callable[..., None]:
        def hook(activation: torch.Tensor, hook: object) -> None:
            if keep:
                captured[layer] = activation[:, skip:, :].float()

        return hook

    hooks = [*extra_hooks, *((model.neuron_hook(layer), capture(layer)) for layer in layers)]
    with torch.inference_mode(), contextlib.suppress(_EveryHookRan):
        model.bridge.run_with_hooks(
            input_ids, fwd_hooks=hooks if to_end else _stopping_after_all(hooks), return_type=None
        )
    return captured


class _EveryHookRan(Exception):
    """Raised by the last of a forward pass's hooks to run: the rest of the pass is not needed."""


def _stopping_after_all(hooks: HookList) -> HookList:
    """The hooks, each as before, the last of them to run then ending the forward pass: in a
    scan of every layer of GPT-2 small, the last layer's output weights and the unembedding
    are about a third of the model's arithmetic."""
    waiting = set(range(len(hooks)))

    def stopping(
        index: int, hook_fn: Callable[..., torch.Tensor | None]
    ) -> Callable[..., torch.Tensor | None]:
        def hook(activation: torch.Tensor, hook: object) -> torch.Tensor | None:
            result = hook_fn(activation, hook=hook)
            waiting.discard(index)
            if not waiting:
                raise _EveryHookRan
            return result

        return hook

    return [(name, stopping(i, hook_fn)) for i, (name, hook_fn) in enumerate(hooks)]


def trace_activations(model: LoadedModel, token_ids: Sequence[int], layer: int) -> torch.Tensor:
    """One neuron layer's activations [tokens, d_mlp] on one text, exactly as the scan sees it."""
    ids, _ = batch_inputs(model, [token_ids])
    return neuron_activations(model, ids, [layer])[layer][0]


def keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed blocks of up to 32 MiB in the process (no mmap and
    munmap of each batch's activations). A CPU scan holds a batch's activations while the
    kernels read them; by default glibc returned those pages to the system after every batch
    and the next forward pass faulted them back in, which made it 6-8 % slower than a bare
    pass (`benchmarks/scan_throughput.py`, whose bare pass asks for the same, since a bare pass
    faulted too, in some runs several times as often). Elsewhere than glibc, nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's most on 64-bit systems
    mallopt(M_TRIM_THRESHOLD, 2**30)
