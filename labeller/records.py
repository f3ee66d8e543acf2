"""The one schema: pydantic records that flow between stages.

Imports neither torch nor SQL, so every stage (scan, catalogue, CLI, export, TUI) can share them
without pulling in the model stack.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def neuron_name(layer: int, neuron: int) -> str:
    """How messages name a neuron: `L5 N131`, which cannot be misread as the number 5.131."""
    return f"L{layer} N{neuron}"


class Split(StrEnum):
    """Held-out splits are fixed at scan time so explain and score can never overlap."""

    TRAIN = "train"
    CALIBRATION = "calibration"
    VALID = "valid"
    TEST = "test"


TOP_SPLITS = (Split.TRAIN, Split.CALIBRATION, Split.VALID, Split.TEST)
RANDOM_SPLITS = (Split.CALIBRATION, Split.VALID, Split.TEST)


def top_split(rank: int) -> Split:
    """Bills et al.: top windows interleaved by rank (0,4,8.. train; 1,5,.. calibration; ...)."""
    return TOP_SPLITS[rank % 4]


def random_split(index: int) -> Split:
    """Bills et al.: random windows with stride 3 (calibration, valid, test)."""
    return RANDOM_SPLITS[index % 3]


def quantile_split(position: int) -> Split:
    """A band's windows, in their sampling order within the band, interleaved like top windows
    (train, calibration, valid, test): with 4 windows a band, one of each."""
    return TOP_SPLITS[position % 4]


BANDS = 8  # bins on a neuron's band grid; a neuron ends with 5 to 8 bands


def band_width(max_activation: float) -> float | None:
    """The width of a neuron's activation bands: the power of two w with 4w <= max < 8w, so the
    bands [0, w), [w, 2w), .. up to the max number 5 to 8. None when the max is not positive
    (no window is banded)."""
    if not max_activation > 0 or math.isinf(max_activation):
        return None
    _, exponent = math.frexp(max_activation)  # max = m * 2**exponent, 0.5 <= m < 1
    return math.ldexp(1.0, exponent - 3)


def band_edges(max_activation: float) -> list[float]:
    """The edges of a neuron's bands, from 0 to its max (the top band's upper edge is the max);
    empty when the max is not positive."""
    width = band_width(max_activation)
    if width is None:
        return []
    top = min(BANDS - 1, math.floor(max_activation / width))
    return [i * width for i in range(top + 1)] + [max_activation]


class ScanStatus(StrEnum):
    RUNNING = "running"
    INTERRUPTED = "interrupted"
    COMPLETE = "complete"


class LabelStatus(StrEnum):
    PROPOSED = "proposed"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    NEEDS_REVIEW = "needs_review"
    WITHDRAWN = "withdrawn"


class ExampleKind(StrEnum):
    TOP = "top"
    RANDOM = "random"
    QUANTILE = "quantile"  # sampled from one of the neuron's activation bands
    SUBSET_TOP = "subset_top"  # among the top windows of one named corpus subset
    # Windows by direct logit attribution (their per-token values are DLA, not activations):
    DLA_TOP = "dla_top"  # the highest DLA of any token: most pushes the correct next token
    DLA_BOTTOM = "dla_bottom"  # the lowest: most suppresses it


class ScoreMethod(StrEnum):
    """Which held-out windows a score correlates over; top-and-random is the primary score
    (what `rank`, best-of-K and `--min-score` read)."""

    TOP_AND_RANDOM = "top_and_random"
    TOP_ONLY = "top_only"
    RANDOM_ONLY = "random_only"
    QUANTILES = "quantiles"  # the activation-band windows only
    ALL = "all"  # top, random and activation-band windows together
    SUBSET_TOP = "subset_top"  # one corpus subset's top windows (one score per subset)


PRIMARY_METHOD = ScoreMethod.TOP_AND_RANDOM


class ScoreWindows(StrEnum):
    """Which held-out windows a scoring run simulated (`score --on`); every score records it.
    Its score's method then says which of them its r correlates over."""

    TOP_AND_RANDOM = "top_and_random"  # Bills et al.'s: top and random windows
    QUANTILES = "quantiles"  # the activation-band windows
    ALL = "all"  # both
    SUBSETS = "subsets"  # each corpus subset's top windows

    @property
    def kinds(self) -> tuple[ExampleKind, ...]:
        return {
            ScoreWindows.TOP_AND_RANDOM: (ExampleKind.TOP, ExampleKind.RANDOM),
            ScoreWindows.QUANTILES: (ExampleKind.QUANTILE,),
            ScoreWindows.ALL: (ExampleKind.TOP, ExampleKind.RANDOM, ExampleKind.QUANTILE),
            ScoreWindows.SUBSETS: (ExampleKind.SUBSET_TOP,),
        }[self]

    @property
    def methods(self) -> tuple[ScoreMethod, ...]:
        """The scores a run on these windows writes; the first has the per-window detail."""
        return {
            ScoreWindows.TOP_AND_RANDOM: (
                ScoreMethod.TOP_AND_RANDOM,
                ScoreMethod.TOP_ONLY,
                ScoreMethod.RANDOM_ONLY,
            ),
            ScoreWindows.QUANTILES: (ScoreMethod.QUANTILES,),
            ScoreWindows.ALL: (
                ScoreMethod.ALL,
                ScoreMethod.TOP_AND_RANDOM,
                ScoreMethod.TOP_ONLY,
                ScoreMethod.RANDOM_ONLY,
                ScoreMethod.QUANTILES,
            ),
            ScoreWindows.SUBSETS: (ScoreMethod.SUBSET_TOP,),
        }[self]


# The window kinds each score method correlates over.
METHOD_KINDS = {
    ScoreMethod.TOP_AND_RANDOM: (ExampleKind.TOP, ExampleKind.RANDOM),
    ScoreMethod.TOP_ONLY: (ExampleKind.TOP,),
    ScoreMethod.RANDOM_ONLY: (ExampleKind.RANDOM,),
    ScoreMethod.QUANTILES: (ExampleKind.QUANTILE,),
    ScoreMethod.ALL: (ExampleKind.TOP, ExampleKind.RANDOM, ExampleKind.QUANTILE),
    ScoreMethod.SUBSET_TOP: (ExampleKind.SUBSET_TOP,),
}


class PredictionKind(StrEnum):
    """What a score's simulated activations are; one kind per score, never mixed, and scores of
    different kinds are not ranked against each other (an expected value over "0".."10" is
    smoother than a written integer, so the two give different correlations for one label)."""

    EXPECTED_VALUE = "expected_value"  # from the LLM's logprobs over "0".."10"
    INTEGER = "integer"  # the integers the LLM wrote (no logprobs)
    RULE = "rule"  # an offline rule (the baseline, detectors)


class SimulatorMode(StrEnum):
    """How an LLM simulator asks for its predictions (`score --simulator-mode`)."""

    CHAT = "chat"  # labeller's chat prompt: the model reprints each token with its value
    # neuron-explainer's prompt with every value "unknown", read from the echoed prompt's
    # logprobs on /v1/completions; its scores name the simulator "<model>:all-at-once"
    ALL_AT_ONCE = "all-at-once"


class HistoryAction(StrEnum):
    """What one label-history entry did to a neuron's labels."""

    PROPOSE = "propose"  # an explainer (LLM or baseline) added a label
    WRITE = "write"  # a person wrote a label
    ACCEPT = "accept"
    REJECT = "reject"
    NEEDS_REVIEW = "needs_review"
    REOPEN = "reopen"  # back to proposed
    WITHDRAW = "withdraw"
    DEMOTE = "demote"  # an accepted label made proposed because another was accepted
    CONFIRM = "confirm"  # a review agreeing with an accepted label
    DISPUTE = "dispute"  # a review disagreeing: the label goes to needs_review
    UNDO = "undo"
    UNSEAL = "unseal"  # a person opened the neuron's held-out (valid, test) windows to read


# The history action that sets a label to each status.
STATUS_ACTIONS = {
    LabelStatus.ACCEPTED: HistoryAction.ACCEPT,
    LabelStatus.REJECTED: HistoryAction.REJECT,
    LabelStatus.NEEDS_REVIEW: HistoryAction.NEEDS_REVIEW,
    LabelStatus.PROPOSED: HistoryAction.REOPEN,
    LabelStatus.WITHDRAWN: HistoryAction.WITHDRAW,
}


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRecord(Record):
    name: str
    source: str = Field(description="demo | native-dir | tl-legacy | hf")
    n_layers: int
    d_mlp: int
    d_model: int
    d_vocab: int
    act_fn: str
    neuron_hook: str = Field(description="hook name template with {layer}")
    created_at: str = Field(default_factory=utc_now)
    weights_fingerprint: str | None = Field(
        default=None,
        description="sha256 over the model's parameters (names, shapes, float32 bytes), taken at "
        "scan time; None for catalogues scanned before it was recorded",
    )


# Windows per forward pass: a run setting, not part of what a scan keeps.
SCAN_BATCH_SIZE = 32


class ScanParams(Record):
    """Everything that must match for a scan to be resumed rather than restarted.

    The defaults are the CLI's and the demo's: 64-token windows, 20 top and 20 random windows
    per neuron, as in Bills et al.
    """

    model: str
    dataset: str
    layers: list[int]
    tokens: int | None = None
    ctx: int = 64
    top_k: int = 20
    random: int = 20
    seed: int = 0
    histogram_bins: int = 64
    band_windows: int = Field(
        default=4,
        description="windows sampled per activation band per neuron (0: no bands); scans "
        "recorded before bands existed read as 0",
    )
    subsets: dict[str, str] = Field(
        default_factory=dict,
        description="named corpus subsets (`--dataset NAME=SPEC`): name -> corpus spec; empty "
        "when the corpus is one spec (`dataset`), whose documents may still carry subsets",
    )
    subset_field: str | None = Field(
        default=None,
        description="field of a .jsonl/.parquet/HF corpus naming each document's subset",
    )
    subset_top_k: int = Field(
        default=10, description="top windows kept per neuron per corpus subset (0: none)"
    )
    dla: bool = Field(
        default=False,
        description="also keep the top and bottom windows by direct logit attribution",
    )
    correlations: Literal["layer", "adjacent"] | None = Field(
        default=None,
        description="Pearson correlation of neuron pairs over the scanned tokens: within each "
        "layer, or also between adjacent scanned layers; None: not accumulated",
    )


class ScanRecord(Record):
    id: int
    model: str
    params: ScanParams
    status: ScanStatus
    tokens_seen: int
    windows_seen: int
    started_at: str
    updated_at: str


class Histogram(Record):
    """Counts over equal-width bins between `low` and `high` (the neuron's min and max)."""

    # NaN stays NaN in JSON (the token Python's json reads back), not null.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    low: float
    high: float
    counts: list[int]


class NeuronStats(Record):
    """A neuron's statistics; any of them may be NaN (from a degenerate scan or an import)."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    max: float
    min: float
    mean: float
    std: float
    density: float = Field(description="fraction of tokens with activation > 0")
    skewness: float | None
    kurtosis: float | None = Field(description="excess kurtosis; None for a constant neuron")
    tokens: int
    histogram: Histogram


class OutputToken(Record):
    token: str
    weight: float


class WeightFacts(Record):
    w_in_w_out_cosine: float
    top_positive_tokens: list[OutputToken]
    top_negative_tokens: list[OutputToken]


class Example(Record):
    """One stored window with one neuron's per-token activations (for the DLA kinds, its
    per-token direct logit attribution: `activations` holds DLA, `max_activation` the window's
    highest DLA for dla_top and lowest for dla_bottom, at `max_index`; a window's last token
    has no next token in the window and shows 0)."""

    kind: ExampleKind
    rank: int = Field(
        description="rank among top windows, index among random windows, or among the "
        "neuron's band windows (band by band, each in sampling order), or among its subset "
        "top windows (subset by subset, each by rank)"
    )
    split: Split
    tokens: list[str]
    activations: list[float]
    max_index: int
    max_activation: float
    document: str
    offset: int = Field(description="token offset of the window in its document")
    band: int | None = Field(
        default=None, description="quantile windows: the band's index, 0 the lowest"
    )
    band_low: float | None = Field(
        default=None, description="quantile windows: the band's lower edge (inclusive)"
    )
    band_high: float | None = Field(
        default=None,
        description="quantile windows: the band's upper edge (exclusive; the neuron's max, "
        "inclusive, for the top band)",
    )
    subset: str | None = Field(
        default=None,
        description="the corpus subset of the window's document (`scan --dataset NAME=...`, "
        "`--subset-field`, the demo's code/prose), or None when the corpus has no subsets",
    )


class Score(Record):
    method: ScoreMethod
    split: Split
    score: float | None = Field(description="None when undefined: constant vectors, not scorable")
    simulator: str | None = None
    prompt_version: str | None = None
    prediction: PredictionKind | None = Field(
        default=None,
        description="what the simulated activations are; None for LLM scores made before it "
        "was recorded (unknown: possibly mixed)",
    )
    blind: bool = Field(
        default=False,
        description="true when the label's author (person or LLM explainer) had been shown none "
        "of the scored windows when writing it; false when they had, or when that is unknown",
    )
    windows: ScoreWindows = Field(
        default=ScoreWindows.TOP_AND_RANDOM,
        description="the held-out windows the scoring run simulated (`score --on`); `method` "
        "says which of them this r is over",
    )
    subset: str | None = Field(
        default=None,
        description="method subset_top: the corpus subset whose top windows this r is over",
    )
    details: dict[str, Any] = Field(
        default_factory=dict, description="per-window true and simulated activations, or reason"
    )
    created_at: str = Field(default_factory=utc_now)


class NullControl(Record):
    """One scoring run's chance level: its labels scored against other neurons' windows.

    `values` are the r of the sampled labels that got one; `excluded` counts those that did not
    (constant vectors, not scorable, failed). Summary numbers are None when no label got an r.
    """

    model: str
    simulator: str
    prompt_version: str
    split: Split
    prediction: PredictionKind
    windows: ScoreWindows = Field(
        default=ScoreWindows.TOP_AND_RANDOM,
        description="the held-out windows its labels were scored on (the run's `--on`)",
    )
    values: list[float]
    excluded: int = 0
    mean: float | None = None
    std: float | None = None
    p95: float | None = None
    created_at: str = Field(default_factory=utc_now)

    @property
    def n(self) -> int:
        return len(self.values)


class Explanation(Record):
    id: int | None = None
    text: str
    source: str
    status: LabelStatus
    prompt_version: str | None = None
    producer_model: str | None = None
    annotator: str | None = None
    best: bool = False
    chosen_on: Split | None = Field(
        default=None,
        description="best of several candidates: the split whose scores chose it (calibration); "
        "None when it was not chosen by score (a lone label, or marked before this was recorded)",
    )
    reported_on: Split | None = Field(
        default=None,
        description="best label: the split of the score it reports (valid; test is sealed)",
    )
    seen: list[Split] | None = Field(
        default=None,
        description="the splits whose windows the label's author had been shown when writing "
        "it (an explainer: train; a person: train and calibration, all four after unsealing); "
        "None when unknown. A score on a split in here is not blind",
    )
    created_at: str = Field(default_factory=utc_now)
    scores: list[Score] = Field(default_factory=list)


class DetectorScore(Record):
    """A detector scored against a neuron like a label: Pearson r of the detector's values with
    the neuron's activations over one held-out split's windows (`labeller detect`)."""

    name: str
    description: str
    definition: str = Field(
        description="what computed it (a built-in's version, a regex, a plugin's entry point); "
        "a stored score whose definition differs is recomputed"
    )
    split: Split
    windows: ScoreWindows = ScoreWindows.TOP_AND_RANDOM
    method: ScoreMethod = ScoreMethod.TOP_AND_RANDOM
    prediction: PredictionKind = PredictionKind.RULE
    score: float | None = Field(description="None when undefined: constant detector or neuron")
    created_at: str = Field(default_factory=utc_now)


class NeuronView(Record):
    """What `labeller show` prints and later the TUI's neuron page reads."""

    model: str
    layer: int
    neuron: int
    scan_id: int
    stats: NeuronStats
    weights: WeightFacts | None
    top_examples: list[Example]
    random_examples: list[Example]
    quantile_examples: list[Example] = Field(default_factory=list)
    subset_examples: list[Example] = Field(
        default_factory=list,
        description="each corpus subset's top windows, subset by subset in rank order",
    )
    dla_top_examples: list[Example] = Field(
        default_factory=list, description="windows with the highest DLA (scanned with --dla)"
    )
    dla_bottom_examples: list[Example] = Field(
        default_factory=list, description="windows with the lowest DLA (scanned with --dla)"
    )
    related_neurons: list[RelatedNeuron] = Field(
        default_factory=list,
        description="the most correlated neurons (r descending), then the most anti-correlated "
        "(r ascending), from a scan with --correlations; empty when not scanned",
    )
    explanations: list[Explanation]
    label: int | None = Field(
        default=None,
        description="id of the neuron's label (its accepted label, else its best-scoring "
        "proposed one; see labeller.catalogue.label_state), or None",
    )
    unsealed_by: list[str] = Field(
        default_factory=list,
        description="the people who unsealed the neuron's held-out windows (see `sealing`)",
    )
    detectors: list[DetectorScore] = Field(
        default_factory=list,
        description="feature detectors scored against the neuron, best first (`labeller detect`)",
    )

    def label_explanation(self) -> Explanation | None:
        """The explanation that is the neuron's label, if any."""
        return next((e for e in self.explanations if e.id == self.label), None)

    def examples(self) -> list[Example]:
        """Every example of every kind, in the order the view lists them: what a rule over all
        of a neuron's windows (sealing's count) reads, so no kind is forgotten."""
        return [
            *self.top_examples,
            *self.random_examples,
            *self.quantile_examples,
            *self.subset_examples,
            *self.dla_top_examples,
            *self.dla_bottom_examples,
        ]


class RelatedNeuron(Record):
    """Another neuron whose activation correlates with this one's over the same tokens."""

    layer: int
    neuron: int
    r: float = Field(description="Pearson correlation of the two neurons' activations")
    label: str | None = Field(default=None, description="its label's text, if it has one")


def window_overlap(a: list[Example], b: list[Example]) -> float | None:
    """Jaccard index of two example lists' windows (by document and offset); None if both are
    empty (nothing to compare)."""
    left = {(e.document, e.offset) for e in a}
    right = {(e.document, e.offset) for e in b}
    if not left and not right:
        return None
    return len(left & right) / len(left | right)


class Trace(Record):
    model: str
    layer: int
    neuron: int
    text: str
    tokens: list[str]
    activations: list[float]


class ChatMessage(Record):
    role: str
    content: str


class ChatRequest(Record):
    """One chat-completions call; its JSON (sorted keys) is the response-cache key."""

    model: str
    messages: list[ChatMessage]
    temperature: float = 0.0
    max_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    seed: int | None = None
    n_sample: int = Field(
        default=0, description="which of several samples of the same prompt (best-of-K)"
    )
    attempt: int = Field(
        default=0, description="retry of an unusable reply: a new cache key, a fresh sample"
    )


class TopLogprob(NamedTuple):
    """Tuples, not models: a reply carries hundreds of these, built and read on the event loop."""

    token: str
    logprob: float


class TokenLogprob(NamedTuple):
    token: str
    logprob: float
    top_logprobs: list[TopLogprob]
    # The token's UTF-8 bytes as the API sends them: a token that ends inside a multi-byte
    # character has a lossy `token` string, so alignment with the reply goes by bytes.
    bytes: list[int] | None = None


class ChatResponse(Record):
    text: str
    logprobs: list[TokenLogprob] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None
    cached: bool = False


class CompletionRequest(Record):
    """One legacy `/v1/completions` call; its JSON (sorted keys) is the response-cache key.

    The all-at-once simulator sends its prompt with `echo` and `max_tokens=0`: nothing is
    generated, and the reply carries the prompt's own tokens with their top `logprobs`.
    """

    model: str
    prompt: str
    max_tokens: int = 0
    echo: bool = True
    logprobs: int = Field(default=15, description="top alternatives per token")
    temperature: float = 0.0


class PromptToken(NamedTuple):
    """One echoed prompt token: its text, its character offset as the server reports it (the
    all-at-once reader counts its own, from the token strings), and its top alternatives (None
    for the first token, which nothing predicts)."""

    token: str
    offset: int
    top_logprobs: list[TopLogprob] | None


class CompletionResponse(Record):
    text: str
    tokens: list[PromptToken] | None = Field(
        default=None, description="the echoed prompt's tokens; None when the server sent none"
    )
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None
    cached: bool = False


class LabelState(Record):
    """One explanation's label as a history entry records it, before or after a change."""

    explanation_id: int
    text: str
    status: LabelStatus
    source: str


class HistoryEntry(Record):
    id: int
    layer: int
    neuron: int
    explanation_id: int | None
    action: HistoryAction
    before: LabelState | None
    after: LabelState | None
    annotator: str | None
    at: str
    edited_from: int | None = Field(
        default=None,
        description="an edit: the id of the label it was edited from (on the edit's first entry)",
    )


class RankRow(Record):
    layer: int
    neuron: int
    score: float | None
    above_chance: bool | None = Field(
        default=None, description="score over its null control's 95th percentile; None: unknown"
    )
    blind: bool | None = Field(
        default=None, description="whether the score is blind (see Score.blind); None: no score"
    )
    label: str | None
    source: str | None
    status: LabelStatus | None
    max: float
    density: float


# --- comparing two models (labeller compare) -----------------------------------------------


class BestMatches(Record):
    """For each neuron of one model (`source`), its best-matching neuron of the other by Pearson
    r over the same tokens, and the best r it reaches against the shuffled pairing (the other
    model's activations on other windows): the chance level a real match must beat."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    source: str
    target: str
    match: list[int | None] = Field(description="best neuron of `target`; None: no r (constant)")
    r: list[float | None]
    shuffled_r: list[float | None]
    median_r: float | None
    shuffled_median_r: float | None
    shuffled_p99: float | None = Field(description="99th percentile of the shuffled best r")
    above_shuffled_p99: float = Field(description="share of neurons whose best r beats it")
    same_index: float = Field(
        description="share of neurons whose best match has the same index (models trained "
        "from the same initialisation keep neuron order if they learn corresponding neurons)"
    )


class StageDistribution(Record):
    """One activation stage of one model's layer: per-neuron shape statistics over every token,
    near-zero shares and a pooled histogram over the token sample."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    stage: str = Field(description="pre | neuron | post | ln_scale")
    hook: str
    kurtosis: list[float | None] = Field(description="excess kurtosis per neuron")
    skewness: list[float | None]
    near_zero: list[float] = Field(
        description="per neuron, share of sampled tokens with |a| <= 5% of its sampled max |a|"
    )
    histogram: Histogram = Field(description="all neurons' sampled activations pooled")


class ModelLayerDistributions(Record):
    model: str
    stages: list[StageDistribution]


class LabelRates(Record):
    """The essay's monosemanticity rates from the catalogue: shares of a model's compared
    neurons whose label scores at least each threshold (valid split, `labeller rank`'s score)."""

    model: str
    neurons: int
    labelled: int
    scored: int
    above_chance: int
    sources: list[str] = Field(description="who wrote the labels (e.g. baseline, an LLM)")
    share_at_least: dict[str, float] = Field(description="threshold -> share of all neurons")
    kurtosis_score_spearman: float | None = Field(
        default=None,
        description="Spearman rank correlation of neuron excess kurtosis with label score",
    )
    kurtosis_score_neurons: int = Field(default=0, description="neurons it was taken over")
    note: str | None = None


class LabelAgreement(Record):
    """Whether best-matched neurons' labels say the same, against randomly paired labels.
    Agreement is word overlap (Jaccard) after dropping words common to many labels."""

    pairs: int = Field(description="matched pairs where both neurons have a label")
    mean_jaccard: float | None
    agreeing: float | None = Field(description="share of pairs with Jaccard >= 0.5")
    baseline_mean_jaccard: float | None
    baseline_agreeing: float | None
    examples: list[tuple[int, int, float, str, str]] = Field(
        default_factory=list, description="(neuron A, neuron B, r, label A, label B)"
    )


class LayerComparison(Record):
    layer: int
    a_to_b: BestMatches
    b_to_a: BestMatches
    mutual: int = Field(description="pairs that are each other's best match")
    distributions: list[ModelLayerDistributions]
    agreement: LabelAgreement | None = None


class CompareReport(Record):
    """What `labeller compare` writes as report.json (and renders as report.md)."""

    models: list[ModelRecord]
    dataset: str
    ctx: int
    seed: int
    tokens: int
    windows: int
    shuffled_tokens: int
    sample_tokens: int
    layers: list[LayerComparison]
    label_rates: list[LabelRates] | None = Field(
        default=None, description="None: no catalogue given (--db)"
    )
    created_at: str = Field(default_factory=utc_now)


class SubsetSummary(Record):
    """One corpus subset of a neuron: what its top windows there peak on, and the label's
    score on that subset's held-out top windows."""

    subset: str
    windows: int = Field(description="top windows kept for this subset")
    max_activation: float = Field(description="the highest window max in the subset")
    peak_tokens: list[str] = Field(
        description="the tokens the subset's top windows peak on, most frequent first"
    )
    score: float | None = Field(
        default=None,
        description="the label's subset_top score on this subset (valid split); None: unscored",
    )


class Illusion(Record):
    """How differently a neuron behaves on its corpus subsets (`labeller.subsets`)."""

    measure: float = Field(
        description="max(example_divergence, strength x score_gap clipped to [0, 1]); 0: alike "
        "everywhere (see labeller.subsets)"
    )
    example_divergence: float = Field(
        description="over pairs of subsets, the largest strength x (1 - peak-token overlap)"
    )
    score_gap: float | None = Field(
        default=None, description="the label's best minus worst per-subset score; None: <2 scored"
    )
    pair: list[str] = Field(description="the two subsets that differ most")


class BandPrecision(Record):
    """How often a feature holds at the peak token of a neuron's windows in one activation
    band (`labeller.band_precision`)."""

    band: int
    low: float
    high: float
    windows: int
    precision: float = Field(description="mean feature value (0..1) at each window's peak token")


class FeatureBands(Record):
    """One feature's per-band precision on a neuron, and its band consistency."""

    feature: str = Field(description='what gave the values: "label #ID" or "detector:NAME"')
    bands: list[BandPrecision]
    consistency: float | None = Field(
        description="the lowest precision over bands 1 and up; None: no such band"
    )


class MeasureRow(Record):
    """One neuron ranked by a measure computed from its view (`rank --by illusion` or
    `band-consistency`)."""

    layer: int
    neuron: int
    value: float
    detail: str = Field(description="what the value is made of, in words")
    label: str | None
