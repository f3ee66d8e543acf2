"""Build the demo catalogue: every bundled model scanned over the demo corpus, then labelled and
scored by the offline baseline, so a new user sees a working catalogue with no network.

`scan_and_label_offline` is the whole pipeline for one model; the TUI tests build their tiny
catalogue with it too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from labeller.catalogue import Catalogue
from labeller.demo import DEMO_MODEL_NAMES, DEMO_TOKENS
from labeller.model.loading import LoadedModel, load_model
from labeller.records import SCAN_BATCH_SIZE, ScanParams, ScoreWindows


def missing_demo_models(catalogue: Catalogue) -> list[str]:
    """The bundled models the catalogue does not hold yet (a rerun builds only these)."""
    present = {name for (name, _layer) in catalogue.neuron_counts()}
    return [name for name in DEMO_MODEL_NAMES if name not in present]


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
    """Scan, then label the neurons of `label_layers` (default: every scanned layer) with the
    baseline and score them on valid: on top and random windows, on each corpus subset's top
    windows (the illusion check) and on the activation bands (band precision)."""
    from labeller.explain.baseline import BaselineExplainer, BaselineSimulator
    from labeller.explain.service import explain_neurons, score_neurons
    from labeller.scan.runner import run_scan

    run_scan(catalogue, model, params, batch_size=batch_size, on_progress=on_progress)
    refs = catalogue.neuron_refs(params.model, label_layers or params.layers, None)
    asyncio.run(explain_neurons(catalogue, refs, BaselineExplainer()))
    asyncio.run(score_neurons(catalogue, refs, BaselineSimulator()))
    for windows in (ScoreWindows.SUBSETS, ScoreWindows.QUANTILES):
        asyncio.run(score_neurons(catalogue, refs, BaselineSimulator(), on=windows))
