"""Build the demo catalogue: every bundled model scanned over the demo corpus, then labelled and
scored by the offline baseline, and the built-in feature detectors scored on every neuron, so a
new user sees a working catalogue with no network.

`scan_and_label_offline` is the whole pipeline for one model up to the labels' scores; the TUI
tests build their tiny catalogue with it too. Detection is a step of its own, last
(`undetected_demo_neurons`, then `detect_neurons` with `demo_detectors`): a model with neurons
left to detect has its labelling finished first (`label_offline` skips what is stored), so a
demo interrupted while labelling or detecting resumes where it stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from labeller.catalogue import Catalogue, NeuronRef
from labeller.demo import DEMO_MODEL_NAMES, DEMO_TOKENS
from labeller.detect.detector import Detector
from labeller.model.loading import LoadedModel, load_model
from labeller.records import SCAN_BATCH_SIZE, ScanParams, ScoreWindows


def missing_demo_models(catalogue: Catalogue) -> list[str]:
    """The bundled models the catalogue does not hold yet (a rerun builds only these)."""
    present = {name for (name, _layer) in catalogue.neuron_counts()}
    return [name for name in DEMO_MODEL_NAMES if name not in present]


def demo_detectors() -> list[Detector]:
    """The detectors the demo scores: the built-in library (not installed plugins, so the demo
    is the same everywhere)."""
    from labeller.detect.registry import builtins

    return builtins()


def undetected_demo_neurons(catalogue: Catalogue) -> dict[str, list[NeuronRef]]:
    """Per bundled model the catalogue holds, its neurons some demo detector has not scored yet
    (models with none left out): all of them after the scan, none once detection finished."""
    from labeller.detect.service import undetected

    present = {name for (name, _layer) in catalogue.neuron_counts()}
    left = {
        name: undetected(catalogue, catalogue.neuron_refs(name, None, None), demo_detectors())
        for name in DEMO_MODEL_NAMES
        if name in present
    }
    return {name: refs for name, refs in left.items() if refs}


def build_demo_model(
    catalogue: Catalogue,
    name: str,
    tokens: int = DEMO_TOKENS,
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """One bundled model, all layers, over `tokens` tokens of the demo corpus."""
    model = load_model(name, device="cpu")
    params = ScanParams(
        model=name, dataset="demo", layers=list(range(model.n_layers)), tokens=tokens
    )
    scan_and_label_offline(catalogue, model, params, on_progress=on_progress)


def scan_and_label_offline(
    catalogue: Catalogue,
    model: LoadedModel,
    params: ScanParams,
    *,
    batch_size: int = SCAN_BATCH_SIZE,
    label_layers: list[int] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Scan, then label the neurons of `label_layers` (default: every scanned layer) offline
    (`label_offline`)."""
    from labeller.scan.runner import run_scan

    run_scan(catalogue, model, params, batch_size=batch_size, on_progress=on_progress)
    layers = label_layers or params.layers
    label_offline(catalogue, catalogue.neuron_refs(params.model, layers, None))


def label_offline(catalogue: Catalogue, refs: list[NeuronRef]) -> None:
    """Label these neurons with the baseline and score the labels on valid: on top and random
    windows, on each corpus subset's top windows (the illusion check) and on the activation
    bands (band precision). Work already stored is skipped, so a labelling that was
    interrupted finishes where it stopped."""
    from labeller.explain.baseline import BaselineExplainer, BaselineSimulator
    from labeller.explain.service import explain_neurons, score_neurons

    asyncio.run(explain_neurons(catalogue, refs, BaselineExplainer()))
    asyncio.run(score_neurons(catalogue, refs, BaselineSimulator()))
    for windows in (ScoreWindows.SUBSETS, ScoreWindows.QUANTILES):
        asyncio.run(score_neurons(catalogue, refs, BaselineSimulator(), on=windows))
