"""Score detectors against neurons like labels: Pearson r (`explain.scoring.correlation_score`,
the labels' code) of a detector's values with a neuron's activations over the neuron's held-out
windows of one split (top and random, as a label's primary score; `prediction: rule`).

A detector's values depend only on a window's tokens, so each distinct window is read and run
through each detector once, however many neurons keep it, and reused for all of them. Neurons
are done in batches, each batch's scores written in one transaction: an interrupted run keeps
the batches it finished, and a rerun skips every score already stored with the same definition
(a changed `--regex` pattern or built-in version is recomputed; `force` redoes all).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from labeller.catalogue import Catalogue, NeuronRef
from labeller.catalogue.detectors import (
    held_out_examples,
    save_detector_scores,
    stored_definitions,
    window_tokens,
)
from labeller.detect.detector import Detector, DetectorError, Window
from labeller.detect.registry import from_definition
from labeller.explain.scoring import correlation_score
from labeller.explain.service import build_scores, scored_windows
from labeller.records import DetectorScore, PredictionKind, ScoreWindows, Split
from labeller.sealing import is_blind, person_sees

SOURCE_PREFIX = "detector:"  # a label made from a detector: its source, the link to it

WINDOWS = ScoreWindows.TOP_AND_RANDOM  # the windows detectors are scored on, as a label's primary
BATCH = 256  # neurons per read and per write transaction
CACHED_WINDOWS = 8192


@dataclass
class DetectReport:
    neurons: int = 0
    written: int = 0
    skipped: int = 0
    no_windows: int = 0


class WindowValues:
    """Each detector's values on a window (a detectors x tokens array), computed on first use
    and kept for the `size` most recently used windows: the random windows every neuron shares
    stay, and memory stays bounded on a 300,000-neuron catalogue."""

    def __init__(self, detectors: Sequence[Detector], size: int = CACHED_WINDOWS) -> None:
        self.detectors = detectors
        self.size = size
        self._values: OrderedDict[int, np.ndarray] = OrderedDict()

    def of(self, window_id: int, tokens: list[str]) -> np.ndarray:
        found = self._values.get(window_id)
        if found is not None:
            self._values.move_to_end(window_id)
            return found
        window = Window.of(tokens)
        found = np.array([d.window_values(window) for d in self.detectors], dtype=np.float64)
        found = found.reshape(len(self.detectors), len(tokens))
        self._values[window_id] = found
        while len(self._values) > self.size:
            self._values.popitem(last=False)
        return found


def detect_neurons(
    catalogue: Catalogue,
    refs: Sequence[NeuronRef],
    detectors: Sequence[Detector],
    *,
    split: Split = Split.VALID,
    force: bool = False,
    on_progress: Callable[[int], None] | None = None,
    cached_windows: int = CACHED_WINDOWS,
) -> DetectReport:
    """Score every detector on every neuron's `split` windows (see module doc); `cached_windows`
    distinct windows' values are kept for reuse (0: none, what the benchmark compares with)."""
    if split is Split.TRAIN:
        raise ValueError("detectors are scored on held-out windows, as labels are")
    on = WINDOWS
    report = DetectReport(neurons=len(refs))
    cache = WindowValues(detectors, cached_windows)
    index = {d.name: i for i, d in enumerate(detectors)}
    done = 0
    if on_progress:
        on_progress(0)
    for start in range(0, len(refs), BATCH):
        batch = refs[start : start + BATCH]
        ids = [r.id for r in batch]
        todo = _todo(catalogue, ids, detectors, split, force)
        report.skipped += sum(len(detectors) - len(t) for t in todo.values())
        needed = [i for i in ids if todo[i]]
        examples = dict(held_out_examples(catalogue, needed, split, on.kinds))
        tokens = window_tokens(
            catalogue, {e.window_id for found in examples.values() for e in found}
        )
        scores: list[tuple[int, DetectorScore]] = []
        for neuron_id in needed:
            windows = examples[neuron_id]
            if not windows:
                report.no_windows += 1
            true = [e.activations for e in windows]
            values = [cache.of(e.window_id, tokens[e.window_id]) for e in windows]
            for detector in todo[neuron_id]:
                row = index[detector.name]
                simulated = [v[row] for v in values]
                scores.append(
                    (
                        neuron_id,
                        DetectorScore(
                            name=detector.name,
                            description=detector.description,
                            definition=detector.definition,
                            split=split,
                            windows=on,
                            score=correlation_score(true, simulated),
                        ),
                    )
                )
        if scores:
            save_detector_scores(catalogue, scores)
            report.written += len(scores)
        done += len(batch)
        if on_progress:
            on_progress(done)
    return report


def _todo(
    catalogue: Catalogue,
    neuron_ids: Sequence[int],
    detectors: Sequence[Detector],
    split: Split,
    force: bool,
) -> dict[int, list[Detector]]:
    """Each neuron's detectors without a stored score of the same definition (all: `force`)."""
    stored = {} if force else stored_definitions(catalogue, neuron_ids, split, WINDOWS)
    return {
        i: [d for d in detectors if stored.get((i, d.name)) != d.definition] for i in neuron_ids
    }


def undetected(
    catalogue: Catalogue,
    refs: Sequence[NeuronRef],
    detectors: Sequence[Detector],
    split: Split = Split.VALID,
) -> list[NeuronRef]:
    """The neurons `detect_neurons` would still score (some detector has no current score):
    none once a run has finished, the rest after an interrupted one."""
    left: list[NeuronRef] = []
    for start in range(0, len(refs), BATCH):
        batch = refs[start : start + BATCH]
        todo = _todo(catalogue, [r.id for r in batch], detectors, split, force=False)
        left += [r for r in batch if todo[r.id]]
    return left


def label_from_detector(
    catalogue: Catalogue, ref: NeuronRef, detector: DetectorScore, annotator: str
) -> int | None:
    """Propose the detector's description as a label of the neuron, linked to it (source
    `detector:NAME`, prompt_version its definition), written by `annotator` (who chose it, having
    seen what a person sees), and scored at once by the detector itself on the valid windows,
    with the labels' code (simulator `detector:NAME`). None when that label already exists."""
    made = from_definition(detector.name, detector.definition)
    if made is None:
        raise DetectorError(
            f"detector {detector.name} has changed or is not installed since it was scored: "
            "rerun `labeller detect` first"
        )
    source = SOURCE_PREFIX + detector.name
    seen = person_sees(annotator in catalogue.unsealed_by(ref.id))
    explanation_id = catalogue.add_explanation(
        ref,
        detector.description,
        source=source,
        prompt_version=detector.definition,
        producer_model=None,
        annotator=annotator,
        seen=seen,
    )
    if explanation_id is None:
        return None
    view = catalogue.neuron_view(ref.model, ref.layer, ref.neuron)
    windows = scored_windows(view, Split.VALID)
    simulated = [made.values(w.tokens) for w in windows]
    catalogue.save_scores(
        explanation_id,
        build_scores(
            windows,
            simulated,
            source,
            detector.definition,
            Split.VALID,
            PredictionKind.RULE,
            blind=is_blind(seen, Split.VALID),
        ),
    )
    return explanation_id
