"""Train the demo tokenizer and the GELU/SoLU pair of 1-layer models on the demo corpus.

The two models are a controlled pair, like the GELU/SoLU toy models the seed essay compares:
same initial weights wherever their shapes agree (the SoLU MLP only adds a LayerNorm), same data
in the same order, same optimiser. Any difference in their neurons is down to the activation.

Data: each document is cut into chunks of ``n_ctx`` tokens, so a window never spans two
documents. A window's input is BOS followed by the chunk minus its last token and its targets are
the chunk, so every position predicts a real token, as a scan of BOS-prefixed windows sees it.
A document's last, shorter chunk is padded and its padding masked out of the loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from tokenizers import Tokenizer

from labeller.demo.corpus import (
    CorpusPart,
    corpus_python_version,
    demo_corpus_fingerprint,
    iter_demo_documents,
)
from labeller.demo.tokenizer import END_OF_TEXT, as_hf_tokenizer, train_demo_tokenizer
from labeller.model.native_dir import save_native_model

if TYPE_CHECKING:
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

# Sized for two CPU cores: both models train in about ten minutes and ship in a few MB.
D_MODEL = 128
N_HEADS = 4
D_HEAD = 32
D_MLP = 512
# Scans feed BOS + 64-token windows (65 positions), so the models must know more than 64;
# 128 also leaves room for a longer --ctx.
N_CTX = 128
BATCH_SIZE = 32
PEAK_LR = 3e-3
MIN_LR_FRACTION = 0.1
WARMUP_STEPS = 200
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
EVAL_BATCH_SIZE = 256
IGNORE_INDEX = -100

# Per-model budget of the shipped demo models: both train in about ten minutes on two CPU cores.
DEFAULT_TRAIN_TOKENS = 6_000_000

# Demo model name -> (activation, the hook that carries its neuron activations).
DEMO_MODELS: dict[str, tuple[str, str]] = {
    "demo-gelu-1l": ("gelu", "blocks.0.mlp.hook_post"),
    "demo-solu-1l": ("solu_ln", "blocks.0.mlp.ln.hook_in"),
}


def demo_model_config(act_fn: str, vocab_size: int, seed: int) -> TransformerBridgeConfig:
    """The demo architecture; with one seed, GELU and SoLU get the same initial weights."""
    from transformer_lens.config import TransformerBridgeConfig

    return TransformerBridgeConfig(
        d_model=D_MODEL,
        n_layers=1,
        d_mlp=D_MLP,
        d_head=D_HEAD,
        n_heads=N_HEADS,
        n_ctx=N_CTX,
        d_vocab=vocab_size,
        act_fn=act_fn,
        normalization_type="LN",
        positional_embedding_type="standard",
        architecture="TransformerLensNative",
        seed=seed,
    )


def encode_windows(
    tokenizer: Tokenizer, part: CorpusPart, n_ctx: int = N_CTX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the corpus part into ``(inputs, targets)`` windows of shape ``[n_windows, n_ctx]``."""
    bos = tokenizer.token_to_id(END_OF_TEXT)
    assert bos is not None, "the demo tokenizer always has the end-of-text token"
    texts = [doc.text for doc in iter_demo_documents(part)]
    inputs: list[list[int]] = []
    targets: list[list[int]] = []
    for encoding in tokenizer.encode_batch(texts, add_special_tokens=False):
        ids = encoding.ids
        for start in range(0, len(ids), n_ctx):
            chunk = ids[start : start + n_ctx]
            padding = n_ctx - len(chunk)
            inputs.append([bos, *chunk[:-1]] + [bos] * padding)
            targets.append(chunk + [IGNORE_INDEX] * padding)
    return torch.tensor(inputs, dtype=torch.long), torch.tensor(targets, dtype=torch.long)


def unigram_log_probs(train_targets: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Add-one smoothed unigram log-probabilities of the train tokens: the baseline to beat."""
    real = train_targets[train_targets != IGNORE_INDEX]
    counts = torch.bincount(real, minlength=vocab_size).double() + 1.0
    return (counts / counts.sum()).log()


def unigram_loss(log_probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood of the real target tokens under a unigram model."""
    real = targets[targets != IGNORE_INDEX]
    return float(-log_probs[real].mean())


def model_loss(bridge: TransformerBridge, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean next-token cross-entropy (nats) of ``bridge`` over the real target tokens."""
    total = 0.0
    count = 0
    with torch.inference_mode():
        for start in range(0, len(inputs), EVAL_BATCH_SIZE):
            logits = bridge(inputs[start : start + EVAL_BATCH_SIZE])
            batch_targets = targets[start : start + EVAL_BATCH_SIZE]
            total += float(
                F.cross_entropy(
                    logits.flatten(0, 1).float(),
                    batch_targets.flatten(),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
            )
            count += int((batch_targets != IGNORE_INDEX).sum())
    return total / count


def batch_order(n_windows: int, steps: int, batch_size: int, seed: int) -> torch.Tensor:
    """Window indices for every step (``[steps, batch_size]``): reshuffled epochs, fixed by seed."""
    generator = torch.Generator().manual_seed(seed)
    needed = steps * batch_size
    n_epochs = -(-needed // n_windows)
    epochs = [torch.randperm(n_windows, generator=generator) for _ in range(n_epochs)]
    return torch.cat(epochs)[:needed].view(steps, batch_size)


def _lr_factor(step: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to ``MIN_LR_FRACTION`` of the peak."""
    warmup = min(WARMUP_STEPS, max(1, steps // 10))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer(bridge: TransformerBridge) -> torch.optim.AdamW:
    """AdamW that decays matrices only; decaying norms and biases only hurts a small model."""
    params = [p for p in bridge.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=PEAK_LR,
        betas=(0.9, 0.95),
    )


def train_model(
    bridge: TransformerBridge,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    order: torch.Tensor,
    progress: Progress | None,
    label: str,
) -> None:
    """Train ``bridge`` in place over the batches named by ``order``.

    Trains through the bridge itself: its parameters are the native model's, and measured on
    this model a bridge step costs the same as a step on ``bridge.original_model``.
    """
    optimizer = _optimizer(bridge)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, len(order))
    )
    task = progress.add_task(label, total=len(order), status="") if progress else None
    bridge.train()
    for step, indices in enumerate(order):
        logits = bridge(inputs[indices])
        loss = F.cross_entropy(
            logits.flatten(0, 1), targets[indices].flatten(), ignore_index=IGNORE_INDEX
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bridge.parameters(), GRAD_CLIP)
        optimizer.step()
        scheduler.step()
        if progress is not None and task is not None:
            if step % 10 == 0:
                progress.update(task, status=f"loss {loss.item():.3f}")
            progress.advance(task)
    bridge.eval()


@contextmanager
def _reproducible_torch(threads: int) -> Iterator[None]:
    """Fix the thread count and demand deterministic kernels, restoring the caller's settings."""
    saved_threads = torch.get_num_threads()
    saved_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(saved_deterministic)


def _progress_bar() -> Progress:
    """Steps with ETA and the running loss, so a user can tell training is healthy."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


def train_demo_models(
    out_dir: Path,
    *,
    tokens: int = DEFAULT_TRAIN_TOKENS,
    seed: int = 0,
    progress: bool = True,
    vocab_size: int = 2048,
) -> dict[str, Any]:
    """Build the demo corpus, train the tokenizer and both models, and save them under ``out_dir``.

    ``tokens`` is the training budget in token positions per model (steps = tokens / (batch size
    x n_ctx), rounded up). Returns the measured numbers, which are also written into each model's
    metadata: held-out loss per model next to the add-one unigram baseline's, evaluated on the
    same held-out tokens.
    """
    from transformer_lens.model_bridge.sources.native import boot

    started = time.perf_counter()
    out_dir = Path(out_dir)
    with _reproducible_torch(threads=2), _progress_bar() if progress else nullcontext() as bar:
        prepare = bar.add_task("corpus and tokenizer", total=1, status="") if bar else None
        tokenizer = train_demo_tokenizer(vocab_size)
        hf_tokenizer = as_hf_tokenizer(tokenizer)
        train_inputs, train_targets = encode_windows(tokenizer, "train")
        heldout_inputs, heldout_targets = encode_windows(tokenizer, "heldout")
        baseline = unigram_loss(unigram_log_probs(train_targets, vocab_size), heldout_targets)
        steps = max(1, -(-tokens // (BATCH_SIZE * N_CTX)))
        order = batch_order(len(train_inputs), steps, BATCH_SIZE, seed)
        common = {
            "corpus_fingerprint": demo_corpus_fingerprint(),
            "corpus_python_version": corpus_python_version(),
            "vocab_size": vocab_size,
            "seed": seed,
            "train_steps": steps,
            "batch_size": BATCH_SIZE,
            "peak_learning_rate": PEAK_LR,
            "tokens_trained": int((train_targets[order] != IGNORE_INDEX).sum()),
            "train_corpus_tokens": int((train_targets != IGNORE_INDEX).sum()),
            "heldout_tokens": int((heldout_targets != IGNORE_INDEX).sum()),
            "unigram_heldout_loss": baseline,
            "torch_version": torch.__version__,
            "transformer_lens_version": version("transformer-lens"),
        }
        if bar is not None and prepare is not None:
            bar.update(prepare, completed=1, status=f"unigram loss {baseline:.3f}")
        models: dict[str, dict[str, Any]] = {}
        for name, (act_fn, neuron_hook) in DEMO_MODELS.items():
            model_started = time.perf_counter()
            bridge = boot(
                demo_model_config(act_fn, vocab_size, seed),
                tokenizer=hf_tokenizer,
                model_name=name,
            )
            train_model(bridge, train_inputs, train_targets, order, bar, name)
            heldout_loss = model_loss(bridge, heldout_inputs, heldout_targets)
            models[name] = {
                "act_fn": act_fn,
                "neuron_hook": neuron_hook,
                "heldout_loss": heldout_loss,
                "train_seconds": round(time.perf_counter() - model_started, 1),
            }
            description = (
                f"1-layer {act_fn} demo model trained on the demo corpus "
                "(standard-library source and pydoc prose)"
            )
            metadata = {"name": name, "description": description, **common, **models[name]}
            save_native_model(bridge, hf_tokenizer, out_dir / name, metadata)
    return {
        **common,
        "models": models,
        "out_dir": str(out_dir),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
