"""What the TUI's workers call: the catalogue, the model and the LLM, safe to use from threads.

No Textual here, no SQL (that is `labeller.catalogue.browse`) and no tensors (that is
`labeller.model.perturb`). SQLite connections are per thread: every call opens its own
`Catalogue` and closes it. A model is loaded once and shared, but forward passes take a lock,
because hooks are registered on the shared modules and two passes at once would mix them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from labeller.band_precision import neuron_band_precision
from labeller.errors import UserError
from labeller.explain.falsify import Verdict, judge, suggest_tests
from labeller.explain.resolve import BASELINE, LLMUnavailable, Resolver
from labeller.records import (
    DetectorScore,
    Example,
    ExampleKind,
    Explanation,
    FeatureBands,
    HistoryEntry,
    LabelStatus,
    NeuronView,
    RelatedNeuron,
)
from labeller.sealing import is_sealed

if TYPE_CHECKING:
    from labeller.catalogue import Catalogue, NeuronRef
    from labeller.catalogue.browse import (
        ListPlace,
        ListSpec,
        NeuronStatus,
        NeuronSummary,
        SortKey,
        StatRange,
        Todo,
    )
    from labeller.catalogue.label_state import Scorer
    from labeller.explain.service import Report
    from labeller.llm.config import LLMConfig
    from labeller.model.loading import LoadedModel
    from labeller.model.perturb import Perturbation
    from labeller.model.perturb_kinds import PerturbationKind
    from labeller.model.search import NeuronSearch

NO_LLM = (
    "no LLM configured: set OPENAI_API_KEY (or OPENAI_BASE_URL for a local server) and name "
    "explainer_model / simulator_model in an [llm] table passed with --llm-config "
    "(or $LABELLER_LLM_CONFIG)"
)

T = TypeVar("T")


@dataclass(frozen=True)
class ListQuery:
    """Everything the neuron list shows: which model, sort, filters and page."""

    model: str
    sort: SortKey
    descending: bool = False
    layer: int | None = None
    status: NeuronStatus | None = None
    min_score: float | None = None
    max_score: float | None = None
    text: str = ""
    todo: Todo | None = None  # a queue: the list narrowed to what still needs a person
    below: float | None = None
    ranges: tuple[StatRange, ...] = ()
    offset: int = 0
    limit: int = 100

    @property
    def spec(self) -> ListSpec:
        """The list without its page: what a walk steps through."""
        from labeller.catalogue.browse import ListSpec

        return ListSpec(
            sort=self.sort,
            descending=self.descending,
            layer=self.layer,
            status=self.status,
            min_score=self.min_score,
            max_score=self.max_score,
            text=self.text,
            todo=self.todo,
            below=self.below,
            ranges=self.ranges,
        )


SHOWN_DETECTORS = 8  # the page's best few; `labeller show --format json` has them all


@dataclass(frozen=True)
class NeuronPage:
    """The neuron page's data as read at one label version (what a change must not overwrite)."""

    ref: NeuronRef
    view: NeuronView
    version: int
    history: list[HistoryEntry]
    # Whose scores decide the label and are shown beside each one, as in the list and `rank`.
    scorer: Scorer
    # Per explanation id, its scores' (above chance, null p95), aligned with its scores.
    chances: dict[int, list[tuple[bool | None, float | None]]] = field(default_factory=dict)
    # Whether the held-out windows (valid, test) are sealed for the TUI's annotator.
    sealed: bool = True
    # Per-band precision of the label and of the best detectors (`labeller.band_precision`).
    band_precision: list[FeatureBands] = field(default_factory=list)

    @property
    def candidates(self) -> list[Explanation]:
        return self.view.explanations


@dataclass(frozen=True)
class Encoded:
    """A text as token ids, cut to the model's context; `dropped` tokens did not fit."""

    token_ids: list[int]
    tokens: list[str]
    dropped: int = 0


@dataclass(frozen=True)
class LiveTrace:
    token_ids: list[int]
    tokens: list[str]
    activations: list[float]


@dataclass(frozen=True)
class SearchResult:
    """Which neurons fire most on a text (see `labeller.model.search`), with each found
    neuron's row in the list (its label) and the text's tokens."""

    text: str
    encoded: Encoded
    search: NeuronSearch
    rows: dict[tuple[int, int], NeuronSummary]


class LoadState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class ModelStatus:
    """Where loading a model has got to."""

    name: str
    state: LoadState
    detail: str = ""

    def describe(self) -> str:
        if self.state is LoadState.LOADING:
            return f"model: {self.detail}…"
        if self.state is LoadState.READY:
            return "model ready"
        return f"model failed: {self.detail}"


@dataclass
class Backend:
    """The TUI's one way to the catalogue file, the models and the LLM."""

    db_path: Path
    annotator: str
    llm_config: Path | None = None
    _models: dict[str, LoadedModel] = field(default_factory=dict)
    _load_lock: threading.Lock = field(default_factory=threading.Lock)
    _forward_lock: threading.Lock = field(default_factory=threading.Lock)
    _tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)
    # Per model: its scanned layers' neuron maxima (for the search), read once.
    _maxes: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    # Per (model, layer, neuron): its top examples' ranks in the layer at their max tokens.
    _ranks: dict[tuple[str, int, int], dict[int, int]] = field(default_factory=dict)

    # --- catalogue -------------------------------------------------------------------------

    @contextmanager
    def catalogue(self, verify: bool = False) -> Iterator[Catalogue]:
        """A connection for the calling thread only, closed when the block ends. The file was
        checked (`PRAGMA quick_check`) when the app opened it; every worker call repeating that
        would cost more than the call (75 ms of a 90 ms neuron page on the demo catalogue), so
        it is skipped unless `verify` asks for it."""
        from labeller.catalogue import Catalogue

        with Catalogue.open(self.db_path, verify=verify) as catalogue:
            yield catalogue

    def layers(self, model: str) -> list[int]:
        from labeller.catalogue.browse import scanned_layers

        with self.catalogue() as catalogue:
            return scanned_layers(catalogue, model)

    def page(self, query: ListQuery) -> tuple[list[NeuronSummary], int]:
        from labeller.catalogue.browse import list_page

        with self.catalogue() as catalogue:
            return list_page(
                catalogue, query.model, query.spec, offset=query.offset, limit=query.limit
            )

    def place(self, model: str, spec: ListSpec, layer: int, neuron: int) -> ListPlace:
        from labeller.catalogue.browse import list_place

        with self.catalogue() as catalogue:
            return list_place(catalogue, model, spec, layer, neuron)

    def step(
        self,
        model: str,
        spec: ListSpec,
        place: ListPlace,
        *,
        backward: bool = False,
        count: bool = True,
    ) -> tuple[ListPlace | None, int | None]:
        """The neighbour of `place` in the list and how many lie beyond `place` that way
        (None when `count` is False and counting would cost more than finding it)."""
        from labeller.catalogue.browse import list_step

        with self.catalogue() as catalogue:
            return list_step(catalogue, model, spec, place, backward=backward, count=count)

    def check_neuron(self, model: str, layer: int, neuron: int) -> None:
        """A UserError saying why, unless the neuron was scanned."""
        with self.catalogue() as catalogue:
            catalogue.neuron_view(model, layer, neuron)

    def neuron(self, model: str, layer: int, neuron: int) -> NeuronPage:
        with self.catalogue() as catalogue:
            view = catalogue.neuron_view(model, layer, neuron)  # says why a neuron is missing
            ref = catalogue.neuron_ref(model, layer, neuron)
            memo: dict[tuple[Any, ...], Any] = {}
            return NeuronPage(
                ref=ref,
                view=view,
                version=catalogue.label_version(ref.id),
                history=catalogue.history(ref),
                scorer=catalogue.label_scorer(view.model),
                chances={
                    e.id: [catalogue.chance(view.model, s, memo) for s in e.scores]
                    for e in view.explanations
                    if e.id is not None
                },
                sealed=is_sealed(view, self.annotator),
                band_precision=neuron_band_precision(view, SHOWN_DETECTORS),
            )

    def example_token_ids(
        self, model: str, layer: int, neuron: int, kind: str, rank: int
    ) -> list[int]:
        from labeller.catalogue.browse import example_token_ids

        with self.catalogue() as catalogue:
            return example_token_ids(catalogue, model, layer, neuron, kind, rank)

    # --- labels ----------------------------------------------------------------------------

    def change_label(
        self,
        page: NeuronPage,
        *,
        explanation_id: int | None = None,
        text: str | None = None,
        status: LabelStatus | None = None,
        edited_from: int | None = None,
    ) -> list[HistoryEntry]:
        """Write a label (`text`, proposed unless `status`, an edit of label `edited_from` when
        given) or set one's status; refused with `StaleLabel` if anyone changed the neuron's
        labels since `page` was read."""
        from labeller.catalogue import labels

        with self.catalogue() as catalogue:
            if text is not None:
                return labels.write_label(
                    catalogue,
                    page.ref,
                    text,
                    status=status or LabelStatus.PROPOSED,
                    annotator=self.annotator,
                    expected_version=page.version,
                    edited_from=edited_from,
                )
            if explanation_id is None or status is None:
                raise ValueError("change_label takes text, or an explanation id and a status")
            return labels.set_status(
                catalogue,
                page.ref,
                explanation_id,
                status,
                annotator=self.annotator,
                expected_version=page.version,
            )

    def label_from_detector(self, page: NeuronPage, detector: DetectorScore) -> int | None:
        """The detector's description proposed as a label linked to it, scored by it (None:
        already a label)."""
        from labeller.detect.service import label_from_detector

        with self.catalogue() as catalogue:
            return label_from_detector(catalogue, page.ref, detector, self.annotator)

    def unseal(self, page: NeuronPage) -> list[HistoryEntry]:
        """Open the neuron's held-out windows to this annotator, recorded in its history."""
        from labeller.catalogue import labels

        with self.catalogue() as catalogue:
            return labels.unseal(catalogue, page.ref, annotator=self.annotator)

    def undo(self, page: NeuronPage) -> list[HistoryEntry]:
        from labeller.catalogue import labels

        with self.catalogue() as catalogue:
            return labels.undo(
                catalogue, page.ref, annotator=self.annotator, expected_version=page.version
            )

    def score_baseline(self, page: NeuronPage) -> str:
        """Score the neuron's unscored labels offline at once; say how it went in one line."""
        report = self._score(page, BASELINE, self.llm_settings)
        if report.not_scorable:
            return 'the offline baseline cannot score it: quote the tokens it fires on in "..."'
        return "scored with the offline baseline" if report.written else "already scored"

    def llm_settings(self) -> LLMConfig:
        """The configured LLM, or a UserError that says what to configure."""
        from labeller.llm.config import load_llm_config

        path = self.llm_config or os.environ.get("LABELLER_LLM_CONFIG") or None
        config = load_llm_config(Path(path) if path else None)
        if not (config.explainer_model or config.simulator_model):
            raise UserError(NO_LLM)
        return config

    def score_llm(self, page: NeuronPage) -> str:
        config = self.llm_settings()
        simulator = config.simulator_model or config.explainer_model
        assert simulator is not None
        report = self._score(page, simulator, lambda: config)
        if report.failed:
            return (
                f"{simulator} could not score {report.failed} label(s) "
                f"({report.failures_by_cause()}); see failed_attempts"
            )
        return f"scored {report.written} label(s) with {simulator}"

    def _score(self, page: NeuronPage, simulator: str, settings: Callable[[], LLMConfig]) -> Report:
        from labeller.explain.service import score_neurons

        with self.catalogue() as catalogue:
            resolver = Resolver(settings, cache=catalogue)
            chosen = resolver.simulator(simulator)
            return _run(
                resolver,
                lambda: score_neurons(catalogue, [page.ref], chosen, null_control=False),
            )

    # --- model -----------------------------------------------------------------------------

    def loaded(self, name: str) -> LoadedModel | None:
        return self._models.get(name)

    def load_model(self, name: str, step: Callable[[str], None]) -> LoadedModel:
        """Load once (later calls return the same model); `step` hears what is happening."""
        with self._load_lock:
            if name in self._models:
                return self._models[name]
            step("importing torch and TransformerLens")
            from labeller.model.loading import load_model

            step(f"reading {name}")
            model = load_model(name, device="cpu")
            self._models[name] = model
            return model

    def encode(self, model: LoadedModel, text: str) -> Encoded:
        """The text's tokens, cut to the context. A fast tokenizer called from two threads at
        once can fail ("Already borrowed"), so every tokenizer call takes a lock."""
        with self._tokenizer_lock:
            ids = model.encode(text)
            kept = ids[: model.context_limit]
            return Encoded(kept, model.token_strings(kept), len(ids) - len(kept))

    def decode(self, model: LoadedModel, token_ids: list[int]) -> str:
        with self._tokenizer_lock:
            return str(model.tokenizer.decode(token_ids))

    def token_strings(self, model: LoadedModel, token_ids: list[int]) -> list[str]:
        with self._tokenizer_lock:
            return model.token_strings(token_ids)

    def trace(self, model: LoadedModel, token_ids: list[int], layer: int, neuron: int) -> LiveTrace:
        from labeller.model.perturb import trace_neuron

        with self._forward_lock:
            values = trace_neuron(model, token_ids, layer, neuron)
        return LiveTrace(token_ids, self.token_strings(model, token_ids), values)

    def perturb(
        self,
        kind: PerturbationKind,
        model: LoadedModel,
        token_ids: list[int],
        layer: int,
        neuron: int,
        target: int | None,
    ) -> Perturbation:
        from labeller.model.perturb import EXPERIMENTS

        with self._forward_lock:
            return EXPERIMENTS[kind](model, token_ids, layer, neuron, target)

    def search_neurons(
        self,
        model: LoadedModel,
        catalogue_model: str,
        text: str,
        *,
        relative: bool = False,
        top: int = 50,
        per_token: int = 10,
    ) -> SearchResult:
        """Run `text` once and rank every neuron of the catalogue's scanned layers on it."""
        from labeller.catalogue.browse import layer_maxes, neuron_summaries
        from labeller.model.search import search_neurons

        maxes = self._maxes.get(catalogue_model)
        if maxes is None:
            with self.catalogue() as catalogue:
                maxes = self._maxes[catalogue_model] = layer_maxes(catalogue, catalogue_model)
        encoded = self.encode(model, text)
        if not encoded.token_ids:
            raise UserError("type some text to search with")
        layers = sorted(layer for layer in maxes if layer < model.n_layers)
        scale = {layer: maxes[layer][: model.d_mlp] for layer in layers}
        with self._forward_lock:
            found = search_neurons(
                model,
                encoded.token_ids,
                layers,
                top=top,
                per_token=per_token,
                scale=scale,
                relative=relative,
            )
        hits = {(h.layer, h.neuron) for h in found.overall}
        hits |= {(h.layer, h.neuron) for row in found.per_token for h in row}
        with self.catalogue(verify=False) as catalogue:
            rows = neuron_summaries(catalogue, catalogue_model, hits)
        return SearchResult(text, encoded, found, rows)

    def example_ranks(
        self, model: LoadedModel, catalogue_model: str, layer: int, neuron: int
    ) -> dict[int, int]:
        """Per top example (by rank), the neuron's rank among its layer's neurons at the
        example's max token: 1 means no neuron of the layer fires more there. Cached per neuron."""
        key = (catalogue_model, layer, neuron)
        if key in self._ranks:
            return self._ranks[key]
        from labeller.catalogue.browse import top_example_windows
        from labeller.model.search import ranks_in_layer

        with self.catalogue() as catalogue:
            windows = top_example_windows(catalogue, catalogue_model, layer, neuron)
        if not windows:
            return {}
        with self._forward_lock:
            if key in self._ranks:  # computed meanwhile (the walk asks ahead for the next page)
                return self._ranks[key]
            ranks = ranks_in_layer(
                model, [w for _, w, _ in windows], [p for _, _, p in windows], layer, neuron
            )
        result = {rank: r for (rank, _, _), r in zip(windows, ranks, strict=True)}
        self._ranks[key] = result
        return result

    def related_neurons(
        self, model: LoadedModel | None, view: NeuronView
    ) -> tuple[list[RelatedNeuron], str]:
        """The neuron's related neurons and where they come from: the scan's correlations when
        it kept them, else computed now on the stored random windows (needs the model)."""
        if view.related_neurons:
            return view.related_neurons, "scanned: Pearson r over every scanned token"
        if model is None:
            raise UserError("the scan kept no correlations; load the model to compute them")
        from labeller.catalogue.browse import top_example_windows
        from labeller.model.related import related_on_windows

        with self.catalogue() as catalogue:
            windows = top_example_windows(
                catalogue, view.model, view.layer, view.neuron, ExampleKind.RANDOM
            )
        if not windows:
            raise UserError("the neuron has no stored random windows to correlate over")
        with self._forward_lock:
            related, tokens = related_on_windows(
                model, [w for _, w, _ in windows], view.layer, view.neuron
            )
        with self.catalogue() as catalogue:
            related = catalogue.with_labels(view.model, related)
        note = (
            f"not scanned (scan with --correlations): computed now over the {len(windows)} "
            f"stored random windows ({tokens:,} tokens), within layer {view.layer}"
        )
        return related, note

    def example_dla(
        self, model: LoadedModel, view: NeuronView, example: Example
    ) -> tuple[list[float], list[float]]:
        """An example window's per-token activations and DLA for the neuron (the last token's
        DLA NaN: its next token is outside the window)."""
        from labeller.model.dla import window_dla

        token_ids = self.example_token_ids(
            view.model, view.layer, view.neuron, example.kind.value, example.rank
        )
        with self._forward_lock:
            return window_dla(model, token_ids, view.layer, view.neuron)

    def suggest_tests(
        self, model: LoadedModel, layer: int, neuron: int, label: str, neuron_max: float
    ) -> tuple[str, list[Verdict]]:
        """Ask the LLM for texts that should and should not fire, and run them: (llm, verdicts)."""
        from labeller.model.perturb import trace_many

        config = self.llm_settings()
        llm = config.explainer_model or config.simulator_model
        assert llm is not None
        with self.catalogue() as catalogue:
            resolver = Resolver(lambda: config, cache=catalogue)
            client = resolver.chat_client()
            suggestions = _run(resolver, lambda: suggest_tests(client, llm, label))
        encoded = [self.encode(model, s.text) for s in suggestions]
        ids = [e.token_ids or [model.pad_id] for e in encoded]
        with self._forward_lock:
            activations = trace_many(model, ids, layer, neuron)
        tokens = [self.token_strings(model, i) for i in ids]
        return llm, judge(suggestions, tokens, activations, neuron_max)


def _run(resolver: Resolver, work: Callable[[], Awaitable[T]]) -> T:
    """`resolver.run(work)`, saying what to configure when no LLM client can be opened."""
    try:
        return resolver.run(work)
    except LLMUnavailable as exc:
        raise UserError(f"{NO_LLM} ({exc})") from None
