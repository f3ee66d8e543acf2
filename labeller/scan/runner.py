"""The scan: stream a corpus through a model and keep, per neuron, what the catalogue stores.

A scan checkpoints its whole state (sharded: every rank's, gathered on rank 0) at batch
boundaries, into the file `Catalogue.checkpoint_path` names beside the catalogue; Ctrl-C finishes
the current batch, checkpoints and exits, and the same command resumes from there.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import math
import signal
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TypeVar

import torch

from labeller.catalogue import Catalogue
from labeller.catalogue.rows import NeuronBlock, WindowRow
from labeller.corpus import Window, iter_corpus, iter_windows, read_ahead
from labeller.errors import (
    NonFiniteActivations,
    ScanAlreadyComplete,
    ScanInterrupted,
    UserError,
)
from labeller.model.activations import batch_inputs, keep_freed_memory, neuron_activations
from labeller.model.dla import DlaInputs, DlaReadout, neuron_activations_for_dla
from labeller.model.loading import LoadedModel
from labeller.records import (
    BANDS,
    SCAN_BATCH_SIZE,
    RelatedNeuron,
    ScanParams,
    ScanStatus,
)
from labeller.scan import distributed, kernels
from labeller.scan.accumulators import (
    AdaptiveHistogram,
    BandSample,
    DlaWindows,
    Moments,
    Reservoir,
    SubsetTopWindows,
    TopWindows,
    WindowMeta,
    merge_bands,
    merge_histograms,
    merge_moments,
    merge_subset_tops,
    merge_top,
    subset_rows,
)
from labeller.scan.correlations import PairSums, merge_pair_sums, top_related
from labeller.scan.distributed import SINGLE, World
from labeller.scan.results import (
    StoredWeightFacts,
    WindowLengths,
    layer_blocks,
    stored_weight_facts,
)

CHECKPOINT_FORMAT = 3  # 2: activation-band samples; 3: per-subset top windows, DLA, pair sums
CHECKPOINT_EVERY_S = 60.0
T = TypeVar("T")


@dataclass
class ScanOutcome:
    scan_id: int
    tokens_seen: int
    windows_seen: int
    neurons: int
    resumed_from: int | None
    notes: list[str] = field(default_factory=list)


def window_keys(token_ids: list[int], seed: int) -> tuple[int, int]:
    """A window's hash and its random priority for the band samples. Both are stable across
    processes (unlike hash()), so checkpoints compare the same way on resume and a resumed
    scan samples as an uninterrupted one; the priority is a seeded hash of the tokens, the
    same for every neuron. Both hash the one text of the tokens."""
    text = repr(token_ids).encode()
    key = f"labeller-bands:{seed}".encode()
    identity = hashlib.blake2b(text, digest_size=8).digest()
    priority = hashlib.blake2b(text, digest_size=8, key=key).digest()
    return int.from_bytes(identity, "little", signed=True), int.from_bytes(
        priority, "little", signed=True
    )


class LayerState:
    def __init__(
        self, params: ScanParams, n: int, device: torch.device, next_n: int | None = None
    ) -> None:
        """`next_n`: the width of the next scanned layer when correlations with it are kept."""
        self.top = TopWindows(params.top_k, n, params.ctx, device)
        self.bands = (
            BandSample(params.band_windows, BANDS, n, params.ctx, device)
            if params.band_windows
            else None
        )
        self.subset_top = (
            SubsetTopWindows(params.subset_top_k, n, params.ctx, device)
            if params.subset_top_k
            else None
        )
        self.dla = DlaWindows(params.top_k, n, params.ctx, device) if params.dla else None
        self.pairs = PairSums(n, n, device) if params.correlations else None
        self.next_pairs = PairSums(n, next_n, device) if next_n is not None else None
        self.moments = Moments(n, device)
        self.histogram = AdaptiveHistogram(n, params.histogram_bins, device)
        self.random_acts = torch.zeros((params.random, params.ctx, n), device=device)
        self.n = n
        self.device = device
        self._buffers: dict[int, tuple[torch.Tensor, ...]] = {}

    def _scratch(self, tokens: int) -> tuple[torch.Tensor, ...]:
        """Batch-sized work buffers, allocated once per size and reused every batch."""
        if tokens not in self._buffers:
            if len(self._buffers) > 4:
                self._buffers.clear()
            shape = (tokens, self.n)
            self._buffers[tokens] = (
                torch.empty(shape, device=self.device),
                torch.empty(shape, device=self.device),
                torch.empty(shape, device=self.device),
                torch.empty(shape, device=self.device),
                torch.empty(shape, dtype=torch.int32, device=self.device),
            )
        return self._buffers[tokens]

    def keep_random(self, acts: torch.Tensor, reservoir_rows: list[tuple[int, int]]) -> None:
        """The batch rows the reservoir took, into their slots."""
        width = acts.shape[1]
        for row, slot in reservoir_rows:
            self.random_acts[slot].zero_()
            self.random_acts[slot, :width] = acts[row]

    def kernel_update(
        self, acts: torch.Tensor, rows: Mapping[str, torch.Tensor]
    ) -> kernels.LayerUpdate:
        """This layer's part of the batch for the compiled kernels, its subsets' tops included
        (`rows`: each subset's rows in the batch, `subset_rows`)."""
        subset_parts = [] if self.subset_top is None else self.subset_top.batch_parts(rows)
        return kernels.LayerUpdate(
            acts, self.moments, self.histogram, [(self.top, None), *subset_parts], self.bands
        )

    def update_torch(
        self,
        acts: torch.Tensor,
        mask: torch.Tensor,
        full: bool,
        window_index: torch.Tensor,
        hashes: torch.Tensor,
        priorities: torch.Tensor,
        subsets: list[str | None],
    ) -> torch.Tensor:
        """What the kernels keep, by torch ops (any device); each window's max is taken once
        and shared by top-k, bands, subset top-k and the batch max."""
        window_max, padded = self._statistics_torch(acts, mask, full)
        kept = [self.top.update(padded, window_max, window_index, hashes)]
        if self.bands is not None:
            kept.append(self.bands.update(padded, window_max, window_index, priorities))
        if self.subset_top is not None and any(s is not None for s in subsets):
            kept.append(self.subset_top.update(padded, window_max, window_index, hashes, subsets))
        return torch.cat(kept)

    def _statistics_torch(
        self, acts: torch.Tensor, mask: torch.Tensor, full: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Moments and histogram by torch ops (any device). The batch is copied once into a
        contiguous buffer, padding at -inf: every statistic then reduces over contiguous rows
        (on CPU ~30x faster than over the strided view). Returns each window's max [B, N] and
        that padded copy."""
        batch, width, n = acts.shape
        work, gathered, y, y2, index = self._scratch(batch * width)
        padded = work[: batch * width].view(batch, width, n)
        padded.copy_(acts)
        if full:
            real = padded.view(-1, n)
        else:
            rows = mask.view(-1).nonzero().squeeze(1)
            real = gathered[: rows.numel()]
            torch.index_select(padded.view(-1, n), 0, rows, out=real)
            padded.masked_fill_(~mask[:, :, None], -math.inf)
        count = real.shape[0]
        window_max = padded.amax(dim=1)
        batch_max = window_max.amax(dim=0)
        batch_min = real.amin(dim=0)
        if not bool((torch.isfinite(batch_min) & torch.isfinite(batch_max)).all()):
            raise NonFiniteActivations("NaN or infinite activations")  # amin/amax keep NaN
        self.moments.update(real, batch_min, batch_max, (y[:count], y2[:count]))
        self.histogram.update(real, batch_min, batch_max, (y[:count], index[:count]))
        return window_max, padded

    def update_dla(
        self,
        readout: DlaReadout,
        inputs: DlaInputs,
        layer: int,
        mask: torch.Tensor,
        window_index: torch.Tensor,
        hashes: torch.Tensor,
    ) -> torch.Tensor:
        """The layer's DLA for the batch, computed here on the accumulating thread (so it
        overlaps the next forward pass) into the batch buffers `update` has finished with; a
        token whose next token is not in its window (the last real one, padding) gets none.
        Returns the batch rows some neuron keeps."""
        assert self.dla is not None
        batch, width = mask.shape
        work, negated, *_ = self._scratch(batch * width)
        dla = readout.dla(inputs, layer, out=work)
        has_next = torch.zeros_like(mask)
        has_next[:, :-1] = mask[:, 1:]
        no_dla = (~has_next).view(-1).nonzero().squeeze(1)
        low = negated.view(-1)[: dla.numel()].view_as(dla)
        return self.dla.update(dla, window_index, hashes, scratch=low, no_dla=no_dla)

    def state(self) -> dict[str, object]:
        return {
            **({"bands": self.bands.state()} if self.bands is not None else {}),
            **({"subset_top": self.subset_top.state()} if self.subset_top is not None else {}),
            **({"dla": self.dla.state()} if self.dla is not None else {}),
            **({"pairs": self.pairs.state()} if self.pairs is not None else {}),
            **({"next_pairs": self.next_pairs.state()} if self.next_pairs is not None else {}),
            "top": self.top.state(),
            "moments": self.moments.state(),
            "histogram": self.histogram.state(),
            "random_acts": self.random_acts,
        }

    def load(self, state: dict[str, object]) -> None:
        self.top.load(state["top"])  # type: ignore[arg-type]
        if self.bands is not None:
            self.bands.load(state["bands"])  # type: ignore[arg-type]
        if self.subset_top is not None:
            self.subset_top.load(state["subset_top"])  # type: ignore[arg-type]
        if self.dla is not None:
            self.dla.load(state["dla"])  # type: ignore[arg-type]
        if self.pairs is not None:
            self.pairs.load(state["pairs"])  # type: ignore[arg-type]
        if self.next_pairs is not None:
            self.next_pairs.load(state["next_pairs"])  # type: ignore[arg-type]
        self.moments.load(state["moments"])  # type: ignore[arg-type]
        self.histogram.load(state["histogram"])  # type: ignore[arg-type]
        self.random_acts.copy_(state["random_acts"])  # type: ignore[arg-type]


class LayerNotFinite(Exception):
    """A layer's activations held NaN or infinity (the caller says where in the corpus)."""

    def __init__(self, layer: int) -> None:
        super().__init__(f"layer {layer}: NaN or infinite activations")
        self.layer = layer


def update_statistics(
    states: dict[int, LayerState],
    activations: dict[int, torch.Tensor],
    mask: torch.Tensor,
    full: bool,
    window_index: torch.Tensor,
    hashes: torch.Tensor,
    priorities: torch.Tensor,
    subsets: list[str | None],
) -> torch.Tensor:
    """Every layer's statistics, top windows and band samples updated with a batch; returns
    the batch rows some neuron keeps. acts: [B, T, N] per layer (strided views of the hooks'
    outputs); mask: [B, T] real tokens; subsets: each row's corpus subset.

    On CPU the compiled kernels take every layer in one call (two passes over each block of
    neurons, on every core), else torch ops layer by layer. Raises LayerNotFinite."""
    layers = list(states)
    on_cpu = all(a.device.type == "cpu" and a.dtype == torch.float32 for a in activations.values())
    if on_cpu and kernels.available():
        rows = subset_rows(subsets, mask.device)
        updates = [states[layer].kernel_update(activations[layer], rows) for layer in layers]
        try:
            _, kept = kernels.update_layers(
                updates, mask.sum(dim=1).numpy(), window_index, hashes, priorities
            )
        except kernels.LayerNotFinite as error:
            raise LayerNotFinite(layers[error.position]) from None
        return kept
    kept_by_layer = []
    for layer in layers:
        try:
            kept_by_layer.append(
                states[layer].update_torch(
                    activations[layer], mask, full, window_index, hashes, priorities, subsets
                )
            )
        except NonFiniteActivations:
            raise LayerNotFinite(layer) from None
    return torch.cat(kept_by_layer)


class Scanner:
    def __init__(self, model: LoadedModel, params: ScanParams) -> None:
        self.model = model
        self.params = params
        adjacent = params.correlations == "adjacent"
        self.layers = {
            layer: LayerState(
                params,
                model.d_mlp,
                model.device,
                model.d_mlp if adjacent and layer + 1 in params.layers else None,
            )
            for layer in params.layers
        }
        self.readout = (
            DlaReadout(model, params.layers, tokens=params.tokens) if params.dla else None
        )
        self.reservoir = Reservoir(params.random, params.seed)
        self.windows: dict[int, WindowMeta] = {}
        self.tokens_seen = 0
        self.windows_seen = 0
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labeller-scan")
        self._pending: Future[None] | None = None

    def process(
        self,
        batch: list[Window],
        indices: list[int] | None = None,
        slots: list[int | None] | None = None,
    ) -> None:
        """Run the model on a batch, then accumulate its activations.

        On CPU the model and then the fused statistics kernels each use every core, one after
        the other (a core held back for accumulating would slow the model more than the
        statistics cost). On a GPU the accumulators of batch i are queued from a worker thread
        while the model computes batch i+1; at most one batch waits, so memory stays bounded.

        Without `indices` the batch continues the stream: the windows take the next indices,
        are offered to the reservoir and counted here. With them (a sharded scan: the global
        index of each window, `slots` its reservoir slot) the caller offers and counts.
        """
        if indices is None:
            indices = list(range(self.windows_seen, self.windows_seen + len(batch)))
            slots = [self.reservoir.offer(i) for i in indices]
            self.windows_seen += len(batch)
            self.tokens_seen += sum(len(w.token_ids) for w in batch)
        assert slots is not None
        index = torch.tensor(indices, dtype=torch.long, device=self.model.device)
        keys = torch.tensor(
            [window_keys(w.token_ids, self.params.seed) for w in batch], device=self.model.device
        )
        hashes, priorities = keys.T.contiguous()
        reservoir_rows = [(row, slot) for row, slot in enumerate(slots) if slot is not None]
        subsets = [w.subset for w in batch]
        ids, mask = batch_inputs(self.model, [w.token_ids for w in batch])
        full = all(len(w.token_ids) == mask.shape[1] for w in batch)
        dla: DlaInputs | None = None
        if self.readout is not None:
            activations, dla = neuron_activations_for_dla(self.model, ids, self.params.layers)
        else:
            activations = neuron_activations(self.model, ids, self.params.layers)
        self.flush()
        accumulate = functools.partial(
            self._accumulate,
            indices,
            batch,
            activations,
            mask,
            full,
            index,
            hashes,
            priorities,
            reservoir_rows,
            subsets,
            dla,
        )
        if self.model.device.type == "cpu":
            accumulate()
        else:
            self._pending = self._worker.submit(accumulate)

    def flush(self) -> None:
        """Wait for the batch being accumulated; re-raises its error, if any."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _accumulate(
        self,
        indices: list[int],
        batch: list[Window],
        activations: dict[int, torch.Tensor],
        mask: torch.Tensor,
        full: bool,
        index: torch.Tensor,
        hashes: torch.Tensor,
        priorities: torch.Tensor,
        reservoir_rows: list[tuple[int, int]],
        subsets: list[str | None],
        dla: DlaInputs | None,
    ) -> None:
        for row, _ in reservoir_rows:
            self.windows[indices[row]] = _meta(batch[row])
        for layer, state in self.layers.items():
            state.keep_random(activations[layer], reservoir_rows)
        try:
            rows = [
                update_statistics(
                    self.layers, activations, mask, full, index, hashes, priorities, subsets
                )
            ]
        except LayerNotFinite as error:
            raise NonFiniteActivations(
                f"layer {error.layer} gave NaN or infinite activations on windows "
                f"{indices[0]:,}-{indices[-1]:,} of the corpus, so the scan stopped: a model "
                "loaded with --dtype float16 can overflow (try --dtype float32), else check "
                "its weights"
            ) from None
        if dla is not None:
            assert self.readout is not None
            rows += [
                s.update_dla(self.readout, dla, layer, mask, index, hashes)
                for layer, s in self.layers.items()
            ]
        if self.params.correlations:
            self._update_pairs(activations, mask)
        for row in torch.cat(rows).unique().tolist():  # one device sync per batch, not per layer
            self.windows[indices[row]] = _meta(batch[row])
        if len(self.windows) > 4 * self._referenced_bound():
            self._forget_unreferenced()

    def _update_pairs(self, activations: dict[int, torch.Tensor], mask: torch.Tensor) -> None:
        """The pair sums of every layer (and with the next layer) over this batch's real tokens."""
        real = {layer: activations[layer][mask] for layer in self.layers}
        for layer, state in self.layers.items():
            assert state.pairs is not None
            state.pairs.update(real[layer])
            if state.next_pairs is not None:
                state.next_pairs.update(real[layer], real[layer + 1])

    def _related(self, layer: int) -> list[list[RelatedNeuron]]:
        """Per neuron of `layer`: its most (anti-)correlated neurons in its layer and, with
        `--correlations adjacent`, in the scanned layers next to it."""
        state = self.layers[layer]
        assert state.pairs is not None
        within = state.pairs.correlation()
        within.fill_diagonal_(float("nan"))  # a neuron is not its own relative
        blocks = [(layer, within)]
        if state.next_pairs is not None:
            blocks.append((layer + 1, state.next_pairs.correlation()))
        previous = self.layers.get(layer - 1)
        if previous is not None and previous.next_pairs is not None:
            blocks.append((layer - 1, previous.next_pairs.correlation().T))
        return top_related([(other, r.cpu()) for other, r in blocks])

    def _referenced_bound(self) -> int:
        per_neuron = self.params.top_k * (3 if self.params.dla else 1)
        per_neuron += self.params.band_windows * BANDS
        per_neuron += self.params.subset_top_k * len(self._subset_names())
        return len(self.layers) * per_neuron * self.model.d_mlp + self.params.random + 1024

    def _referenced(self) -> set[int]:
        """Every window some neuron or the reservoir keeps: the slots' indices marked in one
        array of flags (a sorting `unique` per state took 19 ms of a 4-layer scan's write)."""
        held = []
        for state in self.layers.values():
            held.append(state.top.window.view(-1))
            if state.bands is not None:
                held.append(state.bands.window.view(-1))
            if state.subset_top is not None:
                held.append(state.subset_top.windows())
            if state.dla is not None:
                held += [half.window.view(-1) for half in state.dla.halves()]
        kept = set(self.reservoir.slots)
        kept.discard(-1)
        indices = torch.cat(held).cpu() if held else torch.zeros(0, dtype=torch.long)
        indices = indices[indices >= 0]
        if indices.numel():
            flags = torch.zeros(int(indices.max()) + 1, dtype=torch.bool)
            flags[indices] = True
            kept.update(flags.nonzero().view(-1).tolist())
        return kept

    def _subset_names(self) -> set[str]:
        return {
            name
            for state in self.layers.values()
            if state.subset_top is not None
            for name in state.subset_top.subsets
        }

    def _forget_unreferenced(self) -> None:
        kept = self._referenced()
        self.windows = {i: meta for i, meta in self.windows.items() if i in kept}

    # --- checkpoints ----------------------------------------------------------------------

    def checkpoint(self) -> bytes:
        self.flush()
        self._forget_unreferenced()
        state = {
            "format": CHECKPOINT_FORMAT,
            "params": self.params.model_dump_json(),
            "tokens_seen": self.tokens_seen,
            "windows_seen": self.windows_seen,
            "reservoir_slots": list(self.reservoir.slots),
            "reservoir_rng": _rng_state_to_list(self.reservoir.rng.getstate()),
            "windows": {
                i: (m.document, m.offset, m.token_ids, m.subset) for i, m in self.windows.items()
            },
            "layers": {layer: _to_cpu(s.state()) for layer, s in self.layers.items()},
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()

    def restore(self, blob: bytes) -> None:
        state = torch.load(io.BytesIO(blob), map_location=self.model.device, weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("checkpoint written by another labeller version")
        if state["params"] != self.params.model_dump_json():
            raise ValueError("checkpoint belongs to different scan parameters")
        self.tokens_seen = int(state["tokens_seen"])
        self.windows_seen = int(state["windows_seen"])
        self.reservoir.slots = list(state["reservoir_slots"])
        self.reservoir.rng.setstate(_rng_state_from_list(state["reservoir_rng"]))
        self.windows = {
            int(i): WindowMeta(doc, offset, list(ids), subset)
            for i, (doc, offset, ids, subset) in state["windows"].items()
        }
        for layer, layer_state in state["layers"].items():
            self.layers[int(layer)].load(layer_state)

    # --- sharded scans --------------------------------------------------------------------

    def merge(self, world: World) -> None:
        """Merge every rank's state into rank 0's (a collective: every rank calls it). After it,
        rank 0 holds what one process scanning the whole stream would hold; the other ranks'
        state is left as it was."""
        self.flush()
        owner = torch.tensor([i % world.size for i in self.reservoir.slots], dtype=torch.long)
        mine = (owner == world.rank).to(self.model.device)
        for state in self.layers.values():
            parts = distributed.gather_state(state.top.state(), world)
            if world.leader:
                state.top.load(merge_top(parts, self.params.top_k))
            if state.bands is not None:
                parts = distributed.gather_state(state.bands.state(), world)
                if world.leader:
                    state.bands.load(merge_bands(parts, state.bands.m, state.bands.bins))
            if state.subset_top is not None:
                # Ranks may have met different subsets, so the states differ in shape: gathered
                # as objects, not tensors of one shape.
                subset_parts = distributed.gather(_to_cpu(state.subset_top.state()), world)
                if subset_parts is not None:
                    merged = merge_subset_tops(subset_parts, self.params.subset_top_k)
                    state.subset_top.load(
                        {
                            name: {key: t.to(self.model.device) for key, t in part.items()}
                            for name, part in merged.items()
                        }
                    )
            for half in state.dla.halves() if state.dla is not None else ():
                parts = distributed.gather_state(half.state(), world)
                if world.leader:
                    half.load(merge_top(parts, self.params.top_k))
            for sums in (state.pairs, state.next_pairs):
                if sums is not None:
                    parts = distributed.gather_state(sums.state(), world)
                    if world.leader:
                        sums.load(merge_pair_sums(parts))
            parts = distributed.gather_state(state.moments.state(), world)
            if world.leader:
                state.moments.load(merge_moments(parts))
            parts = distributed.gather_state(state.histogram.state(), world)
            if world.leader:
                state.histogram.load(merge_histograms(parts, state.histogram.bins))
            # A reservoir slot's activations come from the rank that owns its window; the
            # others hold zeros (or stale rows) there, so the masked sum is that rank's row.
            filled = len(self.reservoir.slots)
            own = state.random_acts[:filled] * mine[:, None, None]
            summed = distributed.reduce_sum(own)
            if world.leader:
                state.random_acts[:filled] = summed
        kept = distributed.broadcast(sorted(self._referenced()) if world.leader else None, world)
        found = {i: self.windows[i] for i in kept if i in self.windows}
        received = distributed.gather(found, world)
        if received is not None:
            for part in received:
                self.windows.update(part)

    # --- results ------------------------------------------------------------------------

    def results(
        self, weights: Mapping[int, StoredWeightFacts] | None = None
    ) -> tuple[list[WindowRow], dict[int, str], Iterator[NeuronBlock]]:
        """The kept windows (their strings the model's: `tokens` None), the model's string for
        each of their token ids, and the neurons in blocks (made as they are read). `weights`:
        layers' weight facts made already (`run_scan` starts them early)."""
        self.flush()
        # The other layers' weight facts are made on the worker thread (idle by now) while the
        # windows are made and written, ready when each layer's neurons are.
        made = dict(weights or {})
        facts = {
            layer: _done(made[layer])
            if layer in made
            else self._worker.submit(stored_weight_facts, self.model, layer)
            for layer in self.layers
        }
        windows = [
            WindowRow(
                key=key,
                document=self.windows[key].document,
                offset=self.windows[key].offset,
                token_ids=self.windows[key].token_ids,
                tokens=None,
                subset=self.windows[key].subset,
            )
            for key in sorted(self._referenced())
            if key >= 0
        ]
        token_ids = sorted({i for window in windows for i in window.token_ids})
        token_texts = dict(zip(token_ids, self.model.token_strings(token_ids), strict=True))
        return windows, token_texts, self._neuron_blocks(facts)

    def write_results(
        self,
        catalogue: Catalogue,
        scan_id: int,
        model_id: int,
        weights: Mapping[int, StoredWeightFacts] | None = None,
    ) -> None:
        # The write's parallelism is its own threads (blocks made on this one, encoded on
        # another): torch's threads, spinning after each of its few ops here, took their cores
        # (in a 4-layer scan's write 0.66 CPU-s with them, 0.53 without; 0.37 s against 0.40).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            window_rows, token_texts, neuron_blocks = self.results(weights)
            catalogue.write_scan_results(
                scan_id,
                model_id,
                window_rows,
                neuron_blocks,
                tokens_seen=self.tokens_seen,
                windows_seen=self.windows_seen,
                token_texts=token_texts,
            )
        finally:
            torch.set_num_threads(threads)

    def _neuron_blocks(self, facts: dict[int, Future[StoredWeightFacts]]) -> Iterator[NeuronBlock]:
        lengths = WindowLengths(self.windows)
        for layer, state in self.layers.items():
            yield from layer_blocks(
                layer,
                state,
                reservoir=self.reservoir.slots,
                lengths=lengths,
                weights=facts[layer].result(),
                related=self._related(layer) if state.pairs is not None else None,
            )


def _meta(window: Window) -> WindowMeta:
    return WindowMeta(window.document, window.offset, window.token_ids, window.subset)


def _to_cpu(state: dict[str, Any]) -> dict[str, Any]:
    return {k: (_to_cpu(v) if isinstance(v, dict) else v.cpu()) for k, v in state.items()}


def _rng_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_state_from_list(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


class _DeferredInterrupt:
    """Turns the first Ctrl-C into a request to stop at the next batch boundary.

    Sharded, SIGTERM counts as Ctrl-C too (torchrun passes the signal it gets on to its
    workers, which the terminal may already have sent them): a repeat within a few seconds
    is that same interrupt, not a second one."""

    def __init__(self, sharded: bool = False) -> None:
        self.requested = False
        self.sharded = sharded
        self._since = 0.0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _DeferredInterrupt:
        signals = [signal.SIGINT, signal.SIGTERM] if self.sharded else [signal.SIGINT]
        try:
            for number in signals:
                self._previous[number] = signal.signal(number, self._handle)
        except ValueError:  # not the main thread: plain KeyboardInterrupt semantics
            pass
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            if self.sharded and time.monotonic() - self._since < 5.0:
                return
            raise KeyboardInterrupt
        self.requested = True
        self._since = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)  # type: ignore[arg-type]


def run_scan(
    catalogue: Catalogue | None,
    model: LoadedModel,
    params: ScanParams,
    *,
    batch_size: int = SCAN_BATCH_SIZE,
    text_field: str = "text",
    on_progress: Callable[[int], None] | None = None,
    stop_requested: Callable[[], bool] | None = None,
    world: World | None = None,
    checkpoint_every: float | None = None,
) -> ScanOutcome:
    """Scan, resuming an unfinished scan with the same parameters when one exists.

    With a `world` of several ranks (torchrun; the process group joined), every rank calls
    this; window i of the stream goes to rank i % world.size, and rank 0, the only one given
    the catalogue, writes the merged result (see labeller.scan.distributed)."""
    model.check_layers(params.layers)
    wanted = catalogue is not None
    # The model's row holds its weights' fingerprint, which reads every parameter (a fraction
    # of a second for a small model, seconds for a large one): made on a thread of its own
    # while the corpus opens and the scan runs, so the scan's end does not wait for it. A scan
    # that stops early waits for it, as for the weight facts being made.
    record = _in_background(model.record) if wanted else _done(None)
    with _WeightsAhead(model, params.layers, wanted) as weights, _waited_for(record):
        world = world or SINGLE
        every = CHECKPOINT_EVERY_S if checkpoint_every is None else checkpoint_every
        sharded = world.size > 1
        if world.leader and catalogue is None:
            raise ValueError("rank 0 needs the catalogue")
        # one pass over the corpus: the probe for an empty corpus is put back in front, so reading
        # it (and any warning about it) happens once
        documents = iter_corpus(params.dataset, params.subsets, text_field, params.subset_field)
        all_windows = iter_windows(documents, model.encode, params.ctx)
        first_window = next(all_windows, None)
        if first_window is None:
            raise UserError(f"corpus {params.dataset!r} is empty: it holds no text to scan")

        def shared(value: Any) -> Any:
            """Rank 0's value on every rank."""
            return distributed.broadcast(value, world) if sharded else value

        scanner = Scanner(model, params)
        notes: list[str] = []
        if model.device.type == "cpu" and (why := kernels.build_error()) is not None:
            notes.append(f"statistics ran as torch ops (the same results, slower): {why}")
        resumed_from: int | None = None
        scan_id: int | None = None
        plan: dict[str, Any] = {"complete": None, "unfinished": None, "error": None}
        parts: list[bytes | None] = [None] * world.size
        if catalogue is not None:
            complete = [
                s.id
                for s in catalogue.scans()
                if s.params == params and s.status is ScanStatus.COMPLETE
            ]
            unfinished = catalogue.unfinished_scan(params)
            plan["complete"] = complete[-1] if complete else None
            if unfinished is not None and not complete:
                plan["unfinished"] = unfinished.id
                blob = catalogue.load_checkpoint(unfinished.id)
                try:
                    if blob is None:
                        raise ValueError("it has no checkpoint")
                    parts = split_checkpoint(blob)
                except Exception as exc:
                    plan["unreadable"] = str(exc)
                if "unreadable" not in plan and len(parts) != world.size:
                    plan["error"] = (
                        f"scan {unfinished.id} was checkpointed by {len(parts)} process(es); "
                        f"resume it with {len(parts)} (torchrun's nnodes x nproc-per-node), or "
                        "delete it"
                    )
        plan = shared(plan)
        if plan["complete"] is not None:
            raise ScanAlreadyComplete(plan["complete"])
        if plan["error"]:
            raise UserError(plan["error"])
        if plan["unfinished"] is not None:
            mine = distributed.scatter(parts, world) if sharded else parts[0]
            failure = plan.get("unreadable")
            if failure is None:
                try:
                    if mine is None:
                        raise ValueError("no checkpoint for this rank")
                    scanner.restore(mine)
                except Exception as exc:  # any unreadable checkpoint means: start clean, say so
                    failure = str(exc)
            if sharded:
                failures = distributed.gather(failure, world)
                failure = shared(next((f for f in failures or [] if f), None))
            if failure is None:
                scan_id = resumed_from = plan["unfinished"]
                notes.append(f"resuming scan {scan_id} at {scanner.tokens_seen:,} tokens")
            else:
                notes.append(f"cannot resume scan {plan['unfinished']} ({failure}); starting clean")
                if catalogue is not None:
                    catalogue.discard_scan(plan["unfinished"])
                scanner = Scanner(model, params)
        model_id = 0

        def register() -> int:
            """The scan's row, created when there is something to store: a scan that fails before
            it has anything to resume or write leaves nothing behind."""
            nonlocal scan_id, model_id
            if catalogue is not None:
                fingerprinted = record.result()
                assert fingerprinted is not None
                model_id = catalogue.upsert_model(fingerprinted)
                if scan_id is None:
                    scan_id = catalogue.create_scan(model_id, params)
            scan_id = shared(scan_id)
            assert scan_id is not None
            return scan_id

        def save(status: ScanStatus) -> int:
            """Checkpoint the whole state. Sharded, every rank's state goes to rank 0, which stores
            them together."""
            blob = scanner.checkpoint()
            blobs = distributed.gather(blob, world) if sharded else [blob]
            saved_id = register()
            if catalogue is not None:
                assert blobs is not None
                catalogue.save_checkpoint(
                    saved_id,
                    join_checkpoint(blobs),
                    tokens_seen=scanner.tokens_seen,
                    windows_seen=scanner.windows_seen,
                    status=status,
                )
            return saved_id

        windows = _limited(
            itertools.chain([first_window], all_windows),
            skip=scanner.windows_seen,
            tokens_left=None if params.tokens is None else params.tokens - scanner.tokens_seen,
        )
        if model.device.type != "cpu":  # on CPU every core is the model's or the kernels'
            windows = read_ahead(windows)
        else:
            keep_freed_memory()
        steps = _steps(windows, scanner.windows_seen, batch_size, world, scanner.reservoir)
        # A checkpoint is the whole state (about twice the finished catalogue's size), so the first
        # comes after `every` seconds of scanning, not after the first batch: a shorter scan is
        # cheaper to run again than to checkpoint.
        last_save = time.monotonic()
        with _DeferredInterrupt(sharded) as interrupt, closing(windows):
            try:
                for mine_now, stream_windows, stream_tokens in steps:
                    weights.begin()
                    if mine_now:
                        scanner.process(
                            [w for w, _, _ in mine_now],
                            [i for _, i, _ in mine_now],
                            [slot for _, _, slot in mine_now],
                        )
                    scanner.windows_seen += stream_windows
                    scanner.tokens_seen += stream_tokens
                    if on_progress:
                        on_progress(scanner.tokens_seen)
                    stop = interrupt.requested or bool(stop_requested and stop_requested())
                    due = world.leader and time.monotonic() - last_save >= every
                    if sharded:
                        stop, due = distributed.any_flags(stop, due)
                    if stop:
                        raise ScanInterrupted(save(ScanStatus.INTERRUPTED), scanner.tokens_seen)
                    if due:
                        save(ScanStatus.RUNNING)
                        last_save = time.monotonic()
            except KeyboardInterrupt:
                # A second Ctrl-C: the last checkpoint stands, the scan stays resumable.
                if scan_id is None:
                    raise
                if catalogue is not None:
                    catalogue.set_scan_status(scan_id, ScanStatus.INTERRUPTED)
                raise ScanInterrupted(scan_id, scanner.tokens_seen) from None
            # No checkpoint before the write: a write that fails resumes from the last periodic one.
            finished_id = register()
            if sharded:
                scanner.merge(world)
            if catalogue is not None:
                scanner.write_results(catalogue, finished_id, model_id, weights.made())
        return ScanOutcome(
            scan_id=finished_id,
            tokens_seen=scanner.tokens_seen,
            windows_seen=scanner.windows_seen,
            neurons=len(params.layers) * model.d_mlp,
            resumed_from=resumed_from,
            notes=notes,
        )


def _done(value: T) -> Future[T]:
    future: Future[T] = Future()
    future.set_result(value)
    return future


class _WeightsAhead:
    """The scanned layers' stored weight facts, which are the model's alone, made on a thread
    of their own while the corpus opens and the first batch is read (one core idles then),
    layer by layer until the first forward pass begins; the write makes the others. In a
    4-layer scan (all four made early) the write went from about 0.47 to 0.40 s, and the
    start-up took about 0.05 s longer: the output tokens' text is made in Python, beside the
    corpus's own Python. `wanted`: whether this process writes the catalogue (torchrun's other
    ranks make none)."""

    def __init__(self, model: LoadedModel, layers: list[int], wanted: bool) -> None:
        self._begun = threading.Event()
        self._made = (
            _in_background(lambda: _weights_until(model, layers, self._begun))
            if wanted
            else _done({})
        )

    def begin(self) -> None:
        """The forward pass begins: no layer is started after this."""
        self._begun.set()

    def made(self) -> dict[int, StoredWeightFacts]:
        """The layers made (after the one being made); raises what making them raised."""
        self.begin()
        return self._made.result()

    def __enter__(self) -> _WeightsAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        """Waits for the layer being made (see `_waited_for`)."""
        self.begin()
        wait([self._made])


@contextmanager
def _waited_for(work: Future[Any]) -> Iterator[None]:
    """Waits for `work` on the way out, however the scan leaves. A thread still inside torch
    while the interpreter exits aborts the process (`terminate called without an active
    exception`, SIGABRT): a scan that found nothing to do exited while the fingerprint's
    thread was still reading the weights, and aborted."""
    try:
        yield
    finally:
        wait([work])


def _weights_until(
    model: LoadedModel, layers: list[int], stop: threading.Event
) -> dict[int, StoredWeightFacts]:
    """The layers' stored weight facts, in order, until `stop` is set."""
    made = {}
    for layer in layers:
        if stop.is_set():
            break
        made[layer] = stored_weight_facts(model, layer)
    return made


def _in_background(work: Callable[[], T]) -> Future[T]:
    """`work` on a daemon thread: a scan that stops early exits without waiting for it."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as error:  # handed to whoever asks for the result
            future.set_exception(error)

    threading.Thread(target=run, name="labeller-background", daemon=True).start()
    return future


def _steps(
    windows: Iterator[Window], start: int, batch_size: int, world: World, reservoir: Reservoir
) -> Iterator[tuple[list[tuple[Window, int, int | None]], int, int]]:
    """The stream in steps of batch_size x world.size windows: per step, this rank's windows
    (window i is rank i % world.size's) with their global index and reservoir slot, and the
    windows and tokens the whole step holds. Every rank offers every window to its reservoir,
    in stream order, so all ranks' reservoirs agree with one process's."""
    indexed = enumerate(windows, start=start)
    while step := list(itertools.islice(indexed, batch_size * world.size)):
        mine = []
        for index, window in step:
            slot = reservoir.offer(index)
            if index % world.size == world.rank:
                mine.append((window, index, slot))
        yield mine, len(step), sum(len(w.token_ids) for _, w in step)


def join_checkpoint(blobs: list[bytes]) -> bytes:
    """One process's checkpoint as it is; several ranks' together, with the world size."""
    if len(blobs) == 1:
        return blobs[0]
    buffer = io.BytesIO()
    ranks = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    torch.save({"format": CHECKPOINT_FORMAT, "world_size": len(blobs), "ranks": ranks}, buffer)
    return buffer.getvalue()


def split_checkpoint(blob: bytes) -> list[bytes | None]:
    """Each rank's checkpoint out of what join_checkpoint stored."""
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    if "world_size" not in state:
        return [blob]
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError("checkpoint written by another labeller version")
    return [t.numpy().tobytes() for t in state["ranks"]]


def _limited(
    windows: Iterator[Window], *, skip: int, tokens_left: int | None
) -> Generator[Window, None, None]:
    """Skip windows already scanned; stop after exactly `tokens_left` more tokens."""
    remaining = tokens_left
    for window in itertools.islice(windows, skip, None):
        if remaining is not None:
            if remaining <= 0:
                return
            if len(window.token_ids) > remaining:
                window = Window(
                    window.document, window.offset, window.token_ids[:remaining], window.subset
                )
            remaining -= len(window.token_ids)
        yield window
