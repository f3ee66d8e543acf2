"""Command line: a thin layer over the stages. Model code is imported only by commands that run
a model, so `--help`, `show`, `models` and `scans` start fast."""

from __future__ import annotations

import gc
import io
import itertools
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from labeller import sealing
from labeller.catalogue import (
    Catalogue,
    NeuronRef,
    default_db_path,
    describe_sqlite_error,
    labels,
)
from labeller.corpus import check_dataset_spec, parse_dataset_specs
from labeller.demo import DEMO_TOKENS
from labeller.errors import ScanAlreadyComplete, ScanInterrupted, UserError
from labeller.records import (
    SCAN_BATCH_SIZE,
    CompletionRequest,
    Example,
    HistoryEntry,
    LabelState,
    LabelStatus,
    MeasureRow,
    NeuronView,
    ScanParams,
    ScoreWindows,
    SimulatorMode,
    Split,
    neuron_name,
    window_overlap,
)
from labeller.render import heat_text, precision_bar, printable, sparkline, visible_token

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from labeller.detect.detector import Detector
    from labeller.detect.service import DetectReport
    from labeller.explain.client import DryRun
    from labeller.explain.resolve import Resolver
    from labeller.explain.service import Report

F = TypeVar("F", bound=Callable[..., Any])

DEMO_DB = Path("db") / "demo.db"
# layers, neurons, label ids and versions: SQLite integers, so a larger number is a usage error
# rather than an OverflowError deep in a query
ID = click.IntRange(min=0, max=2**63 - 1)
SCAN_DEFAULTS = {
    name: info.default for name, info in ScanParams.model_fields.items() if not info.is_required()
}


def db_option(func: F) -> F:
    return click.option(
        "--db",
        "db_path",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar="LABELLER_DB",
        default=None,
        help="Catalogue file (default: $LABELLER_DB, else db/labeller.db).",
    )(func)


def model_load_options(func: F) -> F:
    func = click.option(
        "--dtype",
        default="float32",
        show_default=True,
        help="float32, float16 or bfloat16.",
    )(func)
    return click.option(
        "--device", default="auto", show_default=True, help="auto (cuda, mps, cpu), cpu, cuda, mps."
    )(func)


def neuron_target(func: F) -> F:
    """--model (when the catalogue holds several), --layer and --neuron: one neuron."""
    for option in reversed(
        [
            click.option(
                "--model",
                "model_name",
                default=None,
                help="Needed when the catalogue holds several.",
            ),
            click.option("--layer", type=ID, required=True),
            click.option("--neuron", type=ID, required=True),
        ]
    ):
        func = option(func)
    return func


def format_option(func: F) -> F:
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
    )(func)


def parse_layers(
    spec: str, n_layers: int, flag: str = "--layers", what: str = "layers"
) -> list[int]:
    """'0,2-5' or 'all' -> sorted unique numbers below `n_layers`; each range is checked
    before it is expanded, so `0-99999999` is an error, not gigabytes of numbers."""
    if spec.strip() == "all":
        return list(range(n_layers))
    layers: set[int] = set()
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                start, end = (int(x) for x in part.split("-", 1))
                if end < start:
                    raise ValueError
            else:
                start = end = int(part)
            if end >= n_layers:
                raise UserError(f"{flag} {spec!r}: the model has {what} 0-{n_layers - 1}")
            layers.update(range(start, end + 1))
    except ValueError:
        raise UserError(f"{flag} {spec!r}: use numbers and ranges like 0,2-5, or all") from None
    return sorted(layers)


class CliError(click.ClickException):
    """A user mistake: one line on stderr, a non-zero exit, no traceback."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {printable(self.format_message())}", err=True)


class CliInterrupted(CliError):
    """Ctrl-C during a resumable command: exit like an interrupted shell command."""

    exit_code = 130


class EchoHandler(logging.Handler):
    """Log records as `warning: ...` lines on whatever stderr is current."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"{record.levelname.lower()}: {printable(record.getMessage())}", err=True)


def _usage_error(exc: click.UsageError) -> CliError:
    """Click's usage errors as our one `error:` line (exit 2), pointing at the command's help."""
    where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
    return CliError(" ".join(exc.format_message().split()) + where)


def _quiet_broken_pipe() -> click.exceptions.Exit:
    """The reader of our stdout went away (`| head`): stop quietly, as `cat` does, and keep the
    interpreter's final flush from failing on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # stdout is not a file descriptor (a test runner's buffer)
    return click.exceptions.Exit(0)


class StdoutConsole(Console):
    """Rich exits with status 1 when the reader of stdout goes away; we hand the broken pipe to
    LabellerGroup, which ends the command quietly like any other output to a closed pipe."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


class LabellerGroup(click.Group):
    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _usage_error(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _usage_error(exc) from None
        except BrokenPipeError:
            raise _quiet_broken_pipe() from None
        except OSError as exc:
            if exc.filename is None:
                raise
            # a path the user named cannot be created, read or written
            raise CliError(f"{exc.filename}: {exc.strerror or exc}") from None
        except UserError as exc:
            raise CliError(str(exc)) from None
        except ScanInterrupted as exc:
            raise CliInterrupted(f"{exc}; run the same command again to resume") from None
        except sqlite3.Error as exc:
            raise CliError(describe_sqlite_error(exc)) from None
        except UnicodeDecodeError as exc:
            # sqlite3 cannot decode an error message that quotes garbled schema bytes
            if not (isinstance(exc.object, bytes) and exc.object.startswith(b"malformed database")):
                raise
            raise CliError(
                "the catalogue is damaged (SQLite: malformed database schema); restore it from a "
                "backup (`labeller check` says what is wrong)"
            ) from None


@click.group(
    cls=LabellerGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="labeller")
@click.option("-v", "--verbose", is_flag=True, help="Show library log messages.")
def cli(verbose: bool) -> None:
    """Scan, explain, score and hand-label the MLP neurons of transformer language models.

    \b
    Quick look:
      labeller demo
      labeller scan --model demo-solu-1l --dataset demo --tokens 200000
      labeller show --layer 0 --neuron 9
    """
    log = logging.getLogger("labeller")
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    if not any(isinstance(h, EchoHandler) for h in log.handlers):
        log.addHandler(EchoHandler())


@cli.command()
@db_option
@click.option("--model", "model_spec", required=True, help="Demo name, HF name, local dir.")
@click.option(
    "--dataset",
    "datasets",
    required=True,
    multiple=True,
    help="demo, a .txt/.jsonl/.parquet file or folder, HF name; NAME=PATH (repeated) for named "
    "subsets.",
)
@click.option("--layers", default="all", show_default=True, help="Layers to scan, e.g. 0,2-5.")
@click.option("--tokens", type=click.IntRange(min=1), default=None, help="Stop after N tokens.")
@click.option("--ctx", type=click.IntRange(min=2), default=SCAN_DEFAULTS["ctx"], show_default=True)
@click.option(
    "--top-k", type=click.IntRange(min=1), default=SCAN_DEFAULTS["top_k"], show_default=True
)
@click.option(
    "--random",
    "n_random",
    type=click.IntRange(min=0),
    default=SCAN_DEFAULTS["random"],
    show_default=True,
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=SCAN_BATCH_SIZE, show_default=True
)
@click.option(
    "--text-field", default="text", show_default=True, help="Field of .jsonl/.parquet/HF."
)
@click.option(
    "--subset-field",
    default=None,
    help="Field of .jsonl/.parquet/HF naming each document's subset (e.g. source).",
)
@click.option(
    "--subset-top-k",
    type=click.IntRange(min=0),
    default=SCAN_DEFAULTS["subset_top_k"],
    show_default=True,
    help="Top windows kept per neuron per corpus subset; 0: none.",
)
@click.option(
    "--seed",
    type=int,
    default=SCAN_DEFAULTS["seed"],
    show_default=True,
    help="Seed of the random windows and of the activation-band samples.",
)
@click.option(
    "--histogram-bins",
    type=click.IntRange(min=4),
    default=SCAN_DEFAULTS["histogram_bins"],
    show_default=True,
)
@click.option(
    "--band-windows",
    type=click.IntRange(min=0),
    default=SCAN_DEFAULTS["band_windows"],
    show_default=True,
    help="Windows sampled per activation band per neuron (5-8 bands from 0 to the max); 0: none.",
)
@click.option(
    "--correlations",
    type=click.Choice(["layer", "adjacent"]),
    is_flag=False,
    flag_value="layer",
    default=None,
    help="Accumulate the Pearson correlation of every neuron pair within each layer (`adjacent`: "
    "also between adjacent scanned layers) and store each neuron's most related neurons.",
)
@click.option(
    "--dla/--no-dla",
    default=SCAN_DEFAULTS["dla"],
    show_default=True,
    help="Also keep per neuron the top-k windows by direct logit attribution on the correct next "
    "token, highest and lowest (runs the whole model; see the README for its cost).",
)
@click.option(
    "--checkpoint-every",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds of scanning between resumable checkpoints (each one is the whole state, "
    "about twice the finished catalogue); 0: after every batch.",
)
@model_load_options
def scan(
    db_path: Path | None,
    model_spec: str,
    datasets: tuple[str, ...],
    layers: str,
    tokens: int | None,
    ctx: int,
    top_k: int,
    n_random: int,
    batch_size: int,
    text_field: str,
    subset_field: str | None,
    subset_top_k: int,
    seed: int,
    histogram_bins: int,
    band_windows: int,
    correlations: str | None,
    dla: bool,
    checkpoint_every: float,
    device: str,
    dtype: str,
) -> None:
    """Run a model over a corpus and store every neuron's top, random and activation-band windows
    and statistics, and its top windows within each corpus subset.

    Subsets: name them (`--dataset code=PATH --dataset prose=PATH`, read in turn, a document
    each), or name a field of a .jsonl/.parquet corpus (`--subset-field source`); the demo
    corpus has `code` and `prose`.

    Ctrl-C stops at the next batch and keeps what was done; the same command resumes.

    \b
    Example:
      labeller scan --model demo-solu-1l --dataset demo --tokens 200000 --dla --correlations
      labeller scan --model demo-gelu-1l --dataset code=src.jsonl --dataset prose=books.txt
      labeller scan --model gpt2 --dataset NeelNanda/pile-10k --layers 0-11 --tokens 10000000
    """
    from labeller.scan import distributed

    dataset, subsets = parse_dataset_specs(datasets)  # checks every spec, before the model loads
    world = distributed.world_from_env()
    fields: dict[str, Any] = {
        "dataset": dataset,
        "subsets": subsets,
        "subset_field": subset_field,
        "subset_top_k": subset_top_k,
        "layers": layers,
        "tokens": tokens,
        "ctx": ctx,
        "top_k": top_k,
        "random": n_random,
        "seed": seed,
        "histogram_bins": histogram_bins,
        "band_windows": band_windows,
        "dla": dla,
        "correlations": correlations,
    }
    if world is not None:
        rank_device = distributed.device_for(world, device)
        model, params = _scan_model(model_spec, rank_device, dtype, fields)
        _sharded_scan(world, db_path, model, params, batch_size, text_field, checkpoint_every)
        return
    with _new_catalogue_kept_only_if_used(db_path) as catalogue:
        with _status(f"loading {model_spec}"):
            model, params = _scan_model(model_spec, device, dtype, fields)
        outcome = _scan_with_progress(
            catalogue, model, params, batch_size, text_field, checkpoint_every
        )
    if outcome is not None:
        _report_scan(outcome, model_spec, catalogue.path, "")


def _scan_with_progress(
    catalogue: Catalogue,
    model: Any,
    params: ScanParams,
    batch_size: int,
    text_field: str,
    checkpoint_every: float,
    world: Any = None,
) -> Any:
    """The scan of the process that writes the catalogue (the only one, or torchrun's rank 0),
    with its progress bar; None when the same scan is already complete (said so)."""
    from labeller.scan.runner import run_scan

    try:
        with _progress(params.tokens) as advance:
            return run_scan(
                catalogue,
                model,
                params,
                batch_size=batch_size,
                text_field=text_field,
                on_progress=advance,
                world=world,
                checkpoint_every=checkpoint_every,
            )
    except ScanAlreadyComplete as done:
        click.echo(str(done))
        return None


def _scan_model(
    model_spec: str, device: str, dtype: str, fields: dict[str, Any]
) -> tuple[Any, ScanParams]:
    """The loaded model and the scan's parameters (`fields`: the scan flags, layers as typed)."""
    from labeller.model.loading import load_model

    model = load_model(model_spec, device=device, dtype=dtype)
    layers = parse_layers(fields["layers"], model.n_layers)
    params = ScanParams(model=model_spec, **{**fields, "layers": layers})
    if params.ctx > model.context_limit:
        raise UserError(
            f"--ctx {params.ctx} is longer than {model_spec}'s context; use a smaller --ctx"
        )
    return model, params


def _report_scan(outcome: Any, model_spec: str, path: Path, ranks: str) -> None:
    for note in outcome.notes:
        click.echo(note, err=True)
    click.echo(
        f"scan {outcome.scan_id}: {outcome.tokens_seen:,} tokens in {outcome.windows_seen:,} "
        f"windows{ranks}; {outcome.neurons:,} neurons of {model_spec} stored in {path}"
    )


def _sharded_scan(
    world: Any,
    db_path: Path | None,
    model: Any,
    params: ScanParams,
    batch_size: int,
    text_field: str,
    checkpoint_every: float,
) -> None:
    """`scan` as one rank of a torchrun job: every rank scans its share of the windows; rank 0
    alone opens the catalogue, shows progress and reports; the others exit quietly (0 when the
    scan succeeds, 1 with no message when rank 0 reports an error)."""
    from labeller.scan import distributed
    from labeller.scan.runner import run_scan

    distributed.init(world, model.device)
    together = False  # every rank leaves at the same point: the scan's end or an agreed stop
    try:
        if not world.leader:
            try:
                run_scan(
                    None,
                    model,
                    params,
                    batch_size=batch_size,
                    text_field=text_field,
                    world=world,
                    checkpoint_every=checkpoint_every,
                )
            except ScanAlreadyComplete:
                together = True
                return
            except ScanInterrupted:
                together = True
                raise SystemExit(1) from None  # rank 0 says why
            except UserError:
                raise SystemExit(1) from None
            together = True
            return
        with _new_catalogue_kept_only_if_used(db_path) as catalogue:
            try:
                outcome = _scan_with_progress(
                    catalogue, model, params, batch_size, text_field, checkpoint_every, world
                )
            except ScanInterrupted:
                together = True
                raise
        together = True
    finally:
        distributed.finish(together)
    if outcome is not None:
        _report_scan(outcome, params.model, catalogue.path, f" on {world.size} ranks")


@cli.command()
@db_option
@neuron_target
@click.option("--examples", type=click.IntRange(min=0), default=None, help="Top windows to print.")
@click.option(
    "--annotator",
    default=None,
    help="Whose view: held-out windows show once this person unsealed the neuron "
    "(default: git user.name, else $USER).",
)
@format_option
def show(
    db_path: Path | None,
    model_name: str | None,
    layer: int,
    neuron: int,
    examples: int | None,
    annotator: str | None,
    output_format: str,
) -> None:
    """Show one neuron: statistics, weight facts, top and random examples, explanations.

    The text keeps held-out windows (valid, test) sealed until you unseal the neuron
    (`labeller unseal`); the JSON, for programs, holds every window with its split.

    \b
    Example:
      labeller show --layer 0 --neuron 9
      labeller show --model demo-gelu-1l --layer 0 --neuron 42 --format json
    """
    with Catalogue.open(db_path, read_only=True) as catalogue:
        view = catalogue.neuron_view(model_name, layer, neuron)
        chances = score_chances(catalogue, view)
    if output_format == "json":
        click.echo(json.dumps(neuron_json(view, chances), indent=2, ensure_ascii=False))
        return
    sealed = sealing.is_sealed(view, annotator or default_annotator())
    print_neuron(view, examples, chances, sealed=sealed)


Chances = list[list[tuple[bool | None, float | None]]]


def score_chances(catalogue: Catalogue, view: NeuronView) -> Chances:
    """Each explanation's scores' (above chance, null p95), in the view's order."""
    memo: dict[tuple[Any, ...], Any] = {}
    return [[catalogue.chance(view.model, s, memo) for s in e.scores] for e in view.explanations]


def neuron_json(view: NeuronView, chances: Chances | None = None) -> dict[str, Any]:
    from labeller.band_precision import neuron_band_precision
    from labeller.subsets import illusion, subset_summaries

    data = view.model_dump(mode="json")
    data["dla_top_overlap"] = window_overlap(view.top_examples, view.dla_top_examples)
    for key in (
        "top_examples",
        "random_examples",
        "subset_examples",
        "dla_top_examples",
        "dla_bottom_examples",
    ):
        for example in data[key]:
            for name in ("kind", "band", "band_low", "band_high"):
                example.pop(name)
    for example in data["quantile_examples"]:
        example.pop("kind")
    data["subsets"] = [summary.model_dump(mode="json") for summary in subset_summaries(view)]
    found = illusion(view)
    data["illusion"] = None if found is None else found.model_dump(mode="json")
    data["band_precision"] = [b.model_dump(mode="json") for b in neuron_band_precision(view)]
    if chances is not None:
        for explanation, verdicts in zip(data["explanations"], chances, strict=True):
            for score, (verdict, _) in zip(explanation["scores"], verdicts, strict=True):
                score["above_chance"] = verdict
    return data


def chance_note(verdict: bool | None, p95: float | None) -> str:
    """What a score shows beside it when it does not clear its null control."""
    return (
        f" (not above chance: null p95 {p95:.2f})" if verdict is False and p95 is not None else ""
    )


def print_neuron(
    view: NeuronView, limit: int | None, chances: Chances | None = None, *, sealed: bool = True
) -> None:
    """The neuron as a person reads it: held-out windows left out while `sealed`."""
    console = StdoutConsole(highlight=False)
    s = view.stats
    console.print(
        Text(printable(view.model), "bold"),
        f" layer {view.layer}  neuron {view.neuron}  (scan {view.scan_id})",
        markup=False,
    )
    skew = "n/a" if s.skewness is None else f"{s.skewness:.2f}"
    kurt = "n/a" if s.kurtosis is None else f"{s.kurtosis:.2f}"
    console.print(
        f"max {s.max:.3f}  min {s.min:.3f}  mean {s.mean:.4f}  std {s.std:.4f}  "
        f"density {100 * s.density:.2f}%  skewness {skew}  kurtosis {kurt}  tokens {s.tokens:,}"
    )
    h = s.histogram
    console.print(f"histogram {h.low:.3f} {sparkline(h.counts)} {h.high:.3f}", markup=False)
    if view.weights:
        w = view.weights
        console.print(f"cos(w_in, w_out) {w.w_in_w_out_cosine:+.3f}")
        for label, tokens in (
            ("promotes", w.top_positive_tokens),
            ("suppresses", w.top_negative_tokens),
        ):
            words = "  ".join(f"{visible_token(t.token)!r} {t.weight:+.2f}" for t in tokens)
            console.print(f"{label}: {words}", markup=False)
    scale = max(s.max, 1e-9)
    console.print(
        f"\n[bold]Top examples[/bold] (colour scale 0 to {scale:.3f}; max token underlined)"
    )
    for example in sealing.visible(view.top_examples, sealed)[:limit]:
        _print_example(console, example, scale)
    console.print("\n[bold]Random examples[/bold]")
    for example in sealing.visible(view.random_examples, sealed)[:limit]:
        _print_example(console, example, scale)
    if view.quantile_examples:
        console.print(
            "\n[bold]Examples by activation band[/bold] (windows whose max is in the band)"
        )
    for band, examples in itertools.groupby(view.quantile_examples, key=lambda e: e.band):
        first = next(examples)
        console.print(f"band {band}: {band_range(first, s.max)}", markup=False)
        for example in sealing.visible([first, *examples], sealed)[:limit]:
            _print_example(console, example, scale)
    _print_subsets(console, view, limit, scale, sealed)
    _print_band_precision(console, view)
    _print_dla(console, view, limit, sealed)
    _print_related(console, view)
    held_out = sealing.held_out_count(view)
    if sealed and held_out:
        console.print(
            f"\nSealed: {held_out} held-out windows (valid, test). `labeller unseal --model "
            f"{printable(view.model)} --layer {view.layer} --neuron {view.neuron}` shows them to "
            "you, recorded in the history; "
            "your labels on this neuron written after that are scored as not blind",
            markup=False,
        )
    console.print("\n[bold]Explanations[/bold]")
    if not view.explanations:
        console.print("none yet")
    for i, explanation in enumerate(view.explanations):
        verdicts = chances[i] if chances is not None else [(None, None)] * len(explanation.scores)
        scores = ", ".join(
            f"{sc.method}{f'[{printable(sc.subset)}]' if sc.subset else ''}/{sc.split}: "
            f"{'n/a' if sc.score is None else f'{sc.score:.3f}'}"
            + (" blind" if sc.blind else "")
            + chance_note(*verdict)
            for sc, verdict in zip(explanation.scores, verdicts, strict=True)
        )
        console.print(
            f"- #{explanation.id} [{explanation.status}] {printable(explanation.text)} "
            f"({printable(explanation.source)}) {scores}",
            markup=False,
        )
    _print_detectors(console, view)


SHOWN_DETECTORS = 5


def _print_detectors(console: Console, view: NeuronView) -> None:
    """The neuron's best few detector scores (`labeller detect`), if any were scored."""
    if not view.detectors:
        return
    shown = view.detectors[:SHOWN_DETECTORS]
    console.print(
        f"\n[bold]Detectors[/bold] (best {len(shown)} of {len(view.detectors)}; r on held-out "
        "windows, as labels)"
    )
    for d in shown:
        score = "n/a" if d.score is None else f"{d.score:.3f}"
        console.print(
            f"- {printable(d.name)} {d.split.value}: {score}  {printable(d.description)}",
            markup=False,
        )


def _print_subsets(
    console: Console, view: NeuronView, limit: int | None, scale: float, sealed: bool
) -> None:
    """Each corpus subset's top windows under its summary line, then the illusion measure."""
    from labeller.subsets import illusion, subset_summaries

    summaries = subset_summaries(view)
    if not summaries:
        return
    console.print("\n[bold]Subsets[/bold] (top windows within each corpus subset)")
    for summary in summaries:
        score = "unscored" if summary.score is None else f"label score {summary.score:.3f}"
        peaks = "  ".join(printable(t) for t in summary.peak_tokens)
        console.print(
            f"{printable(summary.subset)}: {summary.windows} windows, max "
            f"{summary.max_activation:.3f}, {score}; peaks on: {peaks}",
            markup=False,
        )
        examples = [e for e in view.subset_examples if e.subset == summary.subset]
        for example in sealing.visible(examples, sealed)[:limit]:
            _print_example(console, example, scale)
    found = illusion(view)
    if found is not None:
        gap = "n/a" if found.score_gap is None else f"{found.score_gap:.3f}"
        console.print(
            f"illusion {found.measure:.3f} ({' vs '.join(printable(p) for p in found.pair)}: "
            f"example divergence {found.example_divergence:.3f}, label score gap {gap})",
            markup=False,
        )


def _print_band_precision(console: Console, view: NeuronView) -> None:
    """The label's and the best detectors' precision per activation band, a bar per band."""
    from labeller.band_precision import neuron_band_precision

    for bands in neuron_band_precision(view):
        consistency = "n/a" if bands.consistency is None else f"{bands.consistency:.2f}"
        console.print(
            f"\n[bold]Band precision[/bold] of {printable(bands.feature)} (band consistency "
            f"{consistency})"
        )
        for band in bands.bands:
            console.print(
                f"band {band.band} [{band.low:.3f}, {band.high:.3f}] "
                f"{''.join(precision_bar(band.precision))} {band.precision:.2f} "
                f"({band.windows} windows)",
                markup=False,
            )


def band_range(example: Example, neuron_max: float) -> str:
    """A band's bounds as an interval: [low, high), the top band closed at the neuron's max."""
    low, high = example.band_low or 0.0, example.band_high or 0.0
    return f"[{low:.3f}, {high:.3f}" + ("]" if high >= neuron_max else ")")


def _print_dla(console: Console, view: NeuronView, limit: int | None, sealed: bool) -> None:
    """The DLA windows, coloured by per-token DLA (orange pushes the correct next token, blue
    suppresses it), and how far they are the activation top windows."""
    if not view.dla_top_examples and not view.dla_bottom_examples:
        return
    both = [*view.dla_top_examples, *view.dla_bottom_examples]
    scale = max((abs(e.max_activation) for e in both), default=1.0) or 1.0
    overlap = window_overlap(view.top_examples, view.dla_top_examples)
    shared = "n/a" if overlap is None else f"{overlap:.2f}"
    console.print(
        f"\n[bold]Top examples by direct logit attribution[/bold] (DLA on the correct next "
        f"token, colour scale +-{scale:.3f}; Jaccard overlap with the top windows {shared})"
    )
    for example in sealing.visible(view.dla_top_examples, sealed)[:limit]:
        _print_example(console, example, scale)
    console.print("\n[bold]Bottom examples by direct logit attribution[/bold] (most suppressing)")
    for example in sealing.visible(view.dla_bottom_examples, sealed)[:limit]:
        _print_example(console, example, scale)


def _print_related(console: Console, view: NeuronView) -> None:
    if not view.related_neurons:
        return
    console.print(
        "\n[bold]Related neurons[/bold] (Pearson r of activations over the scanned tokens)"
    )
    for r in view.related_neurons:
        label = printable(r.label) if r.label else "(no label)"
        console.print(f"  L{r.layer} N{r.neuron:<6} r {r.r:+.3f}  {label}", markup=False)


def _print_example(console: Console, example: Example, scale: float) -> None:
    head = f"{example.rank:>3} {example.split.value:<11} {example.max_activation:7.3f}  "
    console.print(head, end="", markup=False)
    console.print(heat_text(example.tokens, example.activations, scale, example.max_index))


@cli.command()
@db_option
@click.option("--model", "model_spec", default=None, help="Default: the catalogue's only model.")
@click.option("--layer", type=ID, required=True)
@click.option("--neuron", type=ID, required=True)
@click.option("--text", required=True, help="Text to run through the model; - reads stdin.")
@model_load_options
@format_option
def trace(
    db_path: Path | None,
    model_spec: str | None,
    layer: int,
    neuron: int,
    text: str,
    device: str,
    dtype: str,
    output_format: str,
) -> None:
    """Run the model on TEXT and print one neuron's activation on every token.

    \b
    Example:
      labeller trace --model demo-solu-1l --layer 0 --neuron 9 --text "def main():"
    """
    from labeller.model.activations import trace_activations
    from labeller.model.loading import load_model
    from labeller.records import Trace

    if text == "-":
        text = _read_stdin_text()
    if model_spec is None:
        with Catalogue.open(db_path, read_only=True) as catalogue:
            model_spec = catalogue.resolve_model(None).name
    model = load_model(model_spec, device=device, dtype=dtype)
    model.check_layers([layer], "--layer")
    if neuron >= model.d_mlp:
        raise UserError(f"{model_spec} has neurons 0-{model.d_mlp - 1} per layer")
    ids = model.encode(text)
    if not ids:
        raise UserError("--text is empty; give some text to trace")
    limit = model.context_limit
    if len(ids) > limit:
        raise UserError(f"--text is {len(ids)} tokens; {model_spec} reads at most {limit}")
    values = trace_activations(model, ids, layer)[:, neuron].tolist()
    result = Trace(
        model=model_spec,
        layer=layer,
        neuron=neuron,
        text=text,
        tokens=model.token_strings(ids),
        activations=values,
    )
    if output_format == "json":
        click.echo(result.model_dump_json(indent=2))
        return
    console = StdoutConsole(highlight=False)
    scale = max(max(values), 1e-9)
    console.print(
        f"{printable(model_spec)} layer {layer} neuron {neuron}: max {max(values):.3f}",
        markup=False,
    )
    console.print(heat_text(result.tokens, values, scale, values.index(max(values))))
    for token, value in zip(result.tokens, values, strict=True):
        console.print(f"{value:9.4f}  {visible_token(token)!r}", markup=False)


@cli.command("search-neurons")
@db_option
@click.argument("text")
@click.option("--model", "model_spec", default=None, help="Default: the catalogue's only model.")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True)
@click.option(
    "--per-token",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Also list the N most active neurons at every token.",
)
@click.option(
    "--relative", is_flag=True, help="Rank by share of each neuron's scanned max, not activation."
)
@model_load_options
@format_option
def search_neurons_command(
    db_path: Path | None,
    text: str,
    model_spec: str | None,
    top: int,
    per_token: int,
    relative: bool,
    device: str,
    dtype: str,
    output_format: str,
) -> None:
    """Which neurons fire most on TEXT, across every scanned layer (- reads stdin).

    The text runs once through the model; each neuron of the catalogue's scanned layers is
    ranked by its largest activation on the text (or, with --relative, by that as a share of
    its max in the scan), with the token it peaks on and its label.

    \b
    Example:
      labeller search-neurons --db db/demo.db --model demo-solu-1l " the cat sat on the"
    """
    from labeller.catalogue.browse import layer_maxes, neuron_summaries
    from labeller.model.loading import load_model
    from labeller.model.search import search_neurons

    if text == "-":
        text = _read_stdin_text()
    with Catalogue.open(db_path, read_only=True) as catalogue:
        model_spec = catalogue.resolve_model(model_spec).name
        maxes = layer_maxes(catalogue, model_spec)
    model = load_model(model_spec, device=device, dtype=dtype)
    layers = sorted(layer for layer in maxes if layer < model.n_layers)
    ids = model.encode(text)
    if not ids:
        raise UserError("TEXT is empty; give some text to search with")
    limit = model.context_limit
    if len(ids) > limit:
        raise UserError(f"TEXT is {len(ids)} tokens; {model_spec} reads at most {limit}")
    found = search_neurons(
        model,
        ids,
        layers,
        top=top,
        per_token=per_token or 1,
        scale={layer: maxes[layer][: model.d_mlp] for layer in layers},
        relative=relative,
    )
    tokens = model.token_strings(ids)
    hits = {(h.layer, h.neuron) for h in found.overall}
    if per_token:
        hits |= {(h.layer, h.neuron) for row in found.per_token for h in row}
    with Catalogue.open(db_path, read_only=True) as catalogue:
        rows = neuron_summaries(catalogue, model_spec, hits)

    def hit_json(hit: Any) -> dict[str, Any]:
        row = rows.get((hit.layer, hit.neuron))
        return {
            "layer": hit.layer,
            "neuron": hit.neuron,
            "position": hit.position,
            "token": tokens[hit.position],
            "activation": hit.activation,
            "share_of_max": hit.relative,
            "label": row.label if row else None,
        }

    if output_format == "json":
        out: dict[str, Any] = {
            "model": model_spec,
            "text": text,
            "tokens": tokens,
            "layers": found.layers,
            "neurons_searched": found.neurons_searched,
            "ranked_by": "share_of_max" if relative else "activation",
            "overall": [hit_json(h) for h in found.overall],
        }
        if per_token:
            out["per_token"] = [[hit_json(h) for h in row] for row in found.per_token]
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    console = StdoutConsole(highlight=False)
    console.print(
        f"{printable(model_spec)}: {found.neurons_searched:,} neurons in "
        f"layer{'s' if len(found.layers) > 1 else ''} {', '.join(map(str, found.layers))} "
        f"on {len(tokens)} tokens, ranked by "
        f"{'share of max' if relative else 'activation'}",
        markup=False,
    )
    table = Table(box=None, pad_edge=False)
    for name, justify in (
        ("#", "right"),
        ("layer", "right"),
        ("neuron", "right"),
        ("act", "right"),
        ("÷max", "right"),
        ("at token", "left"),
        ("label", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for rank, hit in enumerate(found.overall, 1):
        item = hit_json(hit)
        share = hit.relative
        table.add_row(
            str(rank),
            str(hit.layer),
            str(hit.neuron),
            f"{hit.activation:.3f}",
            "–" if share is None else f"{share:.0%}",
            Text(f"#{hit.position} {visible_token(item['token'])!r}"),
            Text(printable(item["label"] or "")),
        )
    console.print(table)
    if per_token:
        for position, row in enumerate(found.per_token):
            best = "  ".join(f"L{h.layer}N{h.neuron} {h.activation:.2f}" for h in row)
            console.print(
                f"{position:4} {visible_token(tokens[position])!r:>14}  {best}", markup=False
            )


def _read_stdin_text() -> str:
    """stdin as UTF-8: other bytes are a user error, not a decoding traceback."""
    data = getattr(sys.stdin, "buffer", sys.stdin).read()
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"--text -: stdin is not UTF-8 (byte {exc.start}); convert it, e.g. with iconv"
        ) from None


@cli.command()
@db_option
@format_option
def models(db_path: Path | None, output_format: str) -> None:
    """List the models a catalogue holds, with their scanned layers.

    \b
    Example:
      labeller models --db db/demo.db
    """
    with Catalogue.open(db_path, read_only=True) as catalogue:
        counts = catalogue.neuron_counts()
        rows = [
            {
                **m.model_dump(),
                "scanned_layers": sorted(layer for (name, layer) in counts if name == m.name),
                "neurons": sum(n for (name, _), n in counts.items() if name == m.name),
            }
            for m in catalogue.models()
        ]
    if output_format == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("model", "source", "layers", "d_mlp", "act_fn", "scanned layers", "neurons")
    table.columns[0].overflow = table.columns[1].overflow = "fold"
    for row in rows:
        table.add_row(
            Text(printable(row["name"])),
            Text(printable(row["source"])),
            str(row["n_layers"]),
            str(row["d_mlp"]),
            row["act_fn"],
            ",".join(map(str, row["scanned_layers"])) or "-",
            f"{row['neurons']:,}",
        )
    StdoutConsole().print(table)


@cli.command()
@db_option
@format_option
def scans(db_path: Path | None, output_format: str) -> None:
    """List the scans in a catalogue: parameters, tokens seen, status.

    \b
    Example:
      labeller scans --db db/demo.db --format json
    """
    with Catalogue.open(db_path, read_only=True) as catalogue:
        records = catalogue.scans()
    if output_format == "json":
        click.echo(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    table = Table("id", "model", "dataset", "layers", "ctx", "top-k", "random", "tokens", "status")
    # long model and corpus paths fold onto more lines instead of being cut with an ellipsis
    table.columns[1].overflow = table.columns[2].overflow = "fold"
    for r in records:
        p = r.params
        table.add_row(
            str(r.id),
            Text(printable(p.model)),
            Text(printable(p.dataset)),
            ",".join(map(str, p.layers)),
            str(p.ctx),
            str(p.top_k),
            str(p.random),
            f"{r.tokens_seen:,}",
            r.status.value,
        )
    StdoutConsole().print(table)


def llm_options(func: F) -> F:
    for option in reversed(
        [
            click.option(
                "--llm-config",
                type=click.Path(path_type=Path, dir_okay=False),
                envvar="LABELLER_LLM_CONFIG",
                default=None,
                help="TOML file with an [llm] table (base_url, models, prices, concurrency).",
            ),
            click.option("--base-url", default=None, help="OpenAI-compatible endpoint URL."),
            click.option("--max-concurrency", type=click.IntRange(min=1), default=None),
            click.option(
                "--timeout", "timeout_s", type=float, default=None, help="Per request, s."
            ),
        ]
    ):
        func = option(func)
    return func


def neuron_choice(func: F) -> F:
    """--model, --layer, --neurons and --force: the neurons a batch command works on."""
    for option in reversed(
        [
            click.option("--model", "model_name", default=None, help="Needed with several."),
            click.option("--layer", "layers", default=None, help="Layers, e.g. 0 or 0-3 (all)."),
            click.option("--neurons", default="all", show_default=True, help="e.g. 0-99 or all."),
            click.option("--force", is_flag=True, help="Redo work already in the catalogue."),
        ]
    ):
        func = option(func)
    return func


def neuron_selection(func: F) -> F:
    """`neuron_choice` and --dry-run, for the commands that call an LLM."""
    func = click.option("--dry-run", is_flag=True, help="Print one prompt and the calls needed.")(
        func
    )
    return neuron_choice(func)


def _selected_refs(
    catalogue: Catalogue, model_name: str | None, layers: str | None, neurons: str
) -> list[Any]:
    model = catalogue.resolve_model(model_name)
    layer_list = None if layers is None else parse_layers(layers, model.n_layers, "--layer")
    neuron_list = (
        None if neurons == "all" else parse_layers(neurons, model.d_mlp, "--neurons", "neurons")
    )
    return catalogue.neuron_refs(model.name, layer_list, neuron_list)


def _resolver(catalogue: Catalogue, flags: dict[str, Any]) -> Resolver:
    """Builds explainers and simulators from names; the LLM settings are read only if one
    needs the LLM (never for the baseline or a dry run)."""
    from functools import partial

    from labeller.explain.resolve import Resolver
    from labeller.llm.config import load_llm_config

    path = flags.pop("llm_config")
    return Resolver(partial(load_llm_config, path, **flags), cache=catalogue)


def _llm_settings(flags: dict[str, Any]) -> Any:
    """The LLM settings the flags and config file give (no API key is read)."""
    from labeller.llm.config import load_llm_config

    overrides = {k: v for k, v in flags.items() if k != "llm_config"}
    return load_llm_config(flags.get("llm_config"), **overrides)


def _print_dry_run(
    stage: str, name: str, refs: list[Any], plan: DryRun, flags: dict[str, Any]
) -> None:
    """The plan, and for an LLM run the time its rate limits allow and its cost (settings read
    from the config, never the key)."""
    if plan.offline:
        click.echo(f"{stage} with the offline {name}: {len(refs):,} neurons, no LLM calls")
        return
    example = plan.example
    if isinstance(example, CompletionRequest):
        click.echo(
            f"--- prompt (POST /completions, echo, max_tokens {example.max_tokens}, "
            f"logprobs {example.logprobs})\n{example.prompt}"
        )
    elif example is not None:
        for message in example.messages:
            click.echo(f"--- {message.role}\n{message.content}")
    for note in plan.notes:
        click.echo(note)
    click.echo(
        f"{stage}: {len(refs):,} neurons, {plan.calls:,} calls, about {plan.tokens:,} prompt tokens"
    )
    from labeller.llm.ratelimit import run_estimate

    try:
        config = _llm_settings(flags)
    except UserError as exc:  # a dry run never needs the config: the plan above stands
        click.echo(f"estimate: none, the LLM settings are unreadable ({exc})")
        return
    estimate = run_estimate(
        plan.calls,
        plan.tokens,
        plan.reply_tokens,
        requests_per_minute=config.max_requests_per_minute,
        tokens_per_minute=config.max_tokens_per_minute,
        price_per_million_input=config.price_per_million_input,
        price_per_million_output=config.price_per_million_output,
    )
    click.echo(f"estimate: {estimate}")


@cli.command()
@db_option
@neuron_selection
@click.option(
    "--explainer", default="baseline", show_default=True, help="baseline, or an LLM model name."
)
@click.option(
    "--candidates",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Best-of-K: sample K explanations per neuron.",
)
@click.option("--temperature", type=float, default=None, help="Sampling temperature (1.0).")
@llm_options
def explain(
    db_path: Path | None,
    model_name: str | None,
    layers: str | None,
    neurons: str,
    force: bool,
    dry_run: bool,
    explainer: str,
    candidates: int,
    temperature: float | None,
    **llm_settings: Any,
) -> None:
    """Propose labels from each neuron's train-split top windows (never from held-out ones).

    With an LLM model name, talks to the OpenAI-compatible endpoint at $OPENAI_BASE_URL (key in
    $OPENAI_API_KEY); replies are cached in the catalogue, so a rerun never pays twice.

    \b
    Example:
      labeller explain --explainer baseline --layer 0 --neurons all
      labeller explain --explainer gpt-4o-mini --layer 5 --neurons 0-99 --candidates 5
    """
    from labeller.explain.service import dry_run_explain, explain_neurons

    with Catalogue.open(db_path) as catalogue:
        refs = _selected_refs(catalogue, model_name, layers, neurons)
        flags = dict(llm_settings)
        resolver = _resolver(catalogue, llm_settings)
        chosen = resolver.explainer(
            explainer,
            candidates=candidates,
            temperature=1.0 if temperature is None else temperature,
        )
        if dry_run:
            plan = dry_run_explain(catalogue, refs, chosen)
            _print_dry_run("explain", explainer, refs, plan, flags)
            return
        report = _run_neurons(
            resolver,
            "explaining",
            len(refs),
            lambda advance: explain_neurons(
                catalogue, refs, chosen, force=force, on_progress=advance
            ),
        )
    _print_report("explain", report, "labels written", resolver.summary_line())


@cli.command()
@db_option
@neuron_selection
@click.option(
    "--simulator", default="baseline", show_default=True, help="baseline, or an LLM model name."
)
@click.option(
    "--split",
    type=click.Choice(["valid", "test"]),
    default="valid",
    show_default=True,
    help="valid marks the best candidate; test gives an unbiased final number.",
)
@click.option(
    "--on",
    "on",
    type=click.Choice([w.value for w in ScoreWindows]),
    default=ScoreWindows.TOP_AND_RANDOM.value,
    show_default=True,
    help="Held-out windows to simulate: top and random (the reference's), the activation-band "
    "windows, or all of them; every score records which.",
)
@click.option("--no-logprobs", is_flag=True, help="Endpoint has no logprobs: use written values.")
@click.option(
    "--simulator-mode",
    type=click.Choice([m.value for m in SimulatorMode]),
    default=SimulatorMode.CHAT.value,
    show_default=True,
    help="all-at-once: neuron-explainer's prompt on /v1/completions with echo (vLLM; not "
    "llama.cpp), for scores comparable with the paper's.",
)
@click.option(
    "--null-sample",
    type=click.FloatRange(0.0, 1.0),
    default=0.1,
    show_default=True,
    help="Share of labels an LLM simulator also scores against another neuron (the null "
    "control); a rule-based simulator scores all of them.",
)
@llm_options
def score(
    db_path: Path | None,
    model_name: str | None,
    layers: str | None,
    neurons: str,
    force: bool,
    dry_run: bool,
    simulator: str,
    split: str,
    on: str,
    no_logprobs: bool,
    simulator_mode: str,
    null_sample: float,
    **llm_settings: Any,
) -> None:
    """Score every label of each neuron by simulation on held-out windows (Pearson r).

    The simulator sees only the label and the held-out tokens; the score is the correlation of
    its predictions with the true activations over all those tokens (top-and-random, plus
    top-only and random-only; with --on quantiles or all, over the activation-band windows
    too). A null control scores a seeded sample of the labels against another neuron's
    windows; scores at or below its 95th percentile are not above chance.

    \b
    Example:
      labeller score --simulator baseline --layer 0
      labeller score --simulator baseline --layer 0 --on quantiles
      labeller score --simulator gpt-4o-mini --layer 5 --split test
      labeller score --simulator my-model --simulator-mode all-at-once --base-url URL
    """
    from labeller.explain.service import dry_run_score, null_line, null_plan, score_neurons

    windows = ScoreWindows(on)

    with Catalogue.open(db_path) as catalogue:
        refs = _selected_refs(catalogue, model_name, layers, neurons)
        flags = dict(llm_settings)
        resolver = _resolver(catalogue, llm_settings)
        chosen = resolver.simulator(
            simulator, logprobs=not no_logprobs, mode=SimulatorMode(simulator_mode)
        )
        if dry_run:
            plan = dry_run_score(catalogue, refs, chosen, Split(split), null_sample, windows)
            _print_dry_run("score", chosen.name, refs, plan, flags)
            if not plan.offline:
                nulls = len(null_plan(catalogue, refs, chosen, Split(split), null_sample, windows))
                click.echo(f"null control: {nulls:,} labels against other neurons (counted above)")
            return
        report = _run_neurons(
            resolver,
            "scoring",
            len(refs),
            lambda advance: score_neurons(
                catalogue,
                refs,
                chosen,
                split=Split(split),
                on=windows,
                force=force,
                null_sample=null_sample,
                on_progress=advance,
            ),
        )
    _print_report(
        "score",
        report,
        "labels scored",
        resolver.summary_line(),
        after=None if report.null is None else null_line(report.null),
    )


@cli.command()
@db_option
@neuron_choice
@click.option(
    "--detector",
    "detector_names",
    multiple=True,
    help="A detector by name (repeatable; `all` for every one). Default: every detector, "
    "unless only --regex is given.",
)
@click.option(
    "--regex",
    "regexes",
    multiple=True,
    help="NAME=PATTERN: a detector marking every token that overlaps a match (repeatable).",
)
@click.option(
    "--split",
    type=click.Choice(["valid", "test"]),
    default="valid",
    show_default=True,
    help="Held-out windows to score on, as `score`.",
)
@click.option("--list", "list_only", is_flag=True, help="Print the detectors and exit.")
def detect(
    db_path: Path | None,
    model_name: str | None,
    layers: str | None,
    neurons: str,
    force: bool,
    detector_names: tuple[str, ...],
    regexes: tuple[str, ...],
    split: str,
    list_only: bool,
) -> None:
    """Score feature detectors against neurons like labels: Pearson r of each detector's
    per-token values with the neuron's activations on its held-out windows (top and random,
    the labels' splits and code; prediction: rule).

    Built-in detectors cover basic syntax, Python, general code and prose (--list); add your
    own with --regex NAME=PATTERN or a package's `labeller.detectors` entry point. A rerun
    skips scores already stored with the same definition and recomputes changed ones.

    \b
    Example:
      labeller detect --list
      labeller detect --model demo-gelu-1l --neurons all
      labeller detect --model demo-gelu-1l --regex digits='[0-9]'
      labeller rank --model demo-gelu-1l --by detector:digits --limit 5
    """
    from labeller.detect.registry import resolve

    chosen = resolve(list(detector_names), list(regexes))
    if list_only:
        width = max(len(d.name) for d in chosen)
        for d in chosen:
            click.echo(f"{d.name:<{width}}  {printable(d.description)}")
        return
    with Catalogue.open(db_path) as catalogue:
        refs = _selected_refs(catalogue, model_name, layers, neurons)
        report = _detect_with_progress(catalogue, refs, chosen, split=Split(split), force=force)
    parts = [
        f"{report.neurons:,} neurons x {len(chosen):,} detector{'s' * (len(chosen) != 1)}",
        f"{report.written:,} scores written",
    ]
    if report.skipped:
        parts.append(f"{report.skipped:,} already stored (use --force to redo)")
    if report.no_windows:
        parts.append(f"{report.no_windows:,} neurons without {split} windows (no score)")
    click.echo("detect: " + ", ".join(parts))


def _detect_with_progress(
    catalogue: Catalogue,
    refs: list[NeuronRef],
    detectors: list[Detector],
    *,
    split: Split = Split.VALID,
    force: bool = False,
) -> DetectReport:
    """`detect_neurons` under a progress bar; Ctrl-C keeps the finished batches and says so
    (a rerun of the same command scores only the rest)."""
    from labeller.detect.service import detect_neurons

    bar = _progress(len(refs), "detecting", "neurons")
    try:
        with bar as advance:
            return detect_neurons(
                catalogue, refs, detectors, split=split, force=force, on_progress=advance
            )
    except KeyboardInterrupt:
        raise CliInterrupted(
            f"interrupted after {bar.seen:,} of {len(refs):,} neurons; "
            "finished batches are kept, rerun to continue"
        ) from None


def _run_neurons(
    resolver: Resolver,
    label: str,
    total: int,
    work: Callable[[Callable[[int], None]], Awaitable[Report]],
) -> Report:
    """`work(advance)` under a progress bar that shows the LLM's retries as they happen.

    Ctrl-C cancels it: what was written stays (written neuron by neuron, replies cached), so a
    rerun continues; one line says so, exit 130. An `LLMFatal` passes up as a user error.
    """

    def retries() -> str:
        stats = resolver.stats()
        if stats is None or not stats.retries:
            return ""
        return f"retries {stats.retries:,} (last: {stats.last_retry})"

    bar = _progress(total, label, "neurons", status=retries)
    try:
        with bar as advance:
            return resolver.run(lambda: work(advance))
    except KeyboardInterrupt:
        raise CliInterrupted(
            f"interrupted after {bar.seen:,} of {total:,} neurons; "
            "finished work is kept, rerun to continue"
        ) from None


def _print_report(
    stage: str,
    report: Report,
    written: str,
    llm_summary: str | None,
    *,
    after: str | None = None,
) -> None:
    """The run's one summary line (then `after`, e.g. the null control's); exits 1 when
    anything failed, so scripts notice."""
    if llm_summary is not None:
        click.echo(llm_summary)
    for note in report.notes[:20]:
        click.echo(f"note: {printable(note)}", err=True)
    parts = [f"{report.neurons:,} neurons", f"{report.written:,} {written}"]
    if report.skipped:
        parts.append(f"{report.skipped:,} already done (use --force to redo)")
    if report.not_scorable:
        parts.append(f"{report.not_scorable:,} not scorable offline")
    if report.failed:
        parts.append(
            f"{report.failed:,} failed: {report.failures_by_cause()} (kept in failed_attempts)"
        )
    click.echo(f"{stage}: " + ", ".join(parts))
    if after is not None:
        click.echo(after)
    if report.failed:
        click.get_current_context().exit(1)


def default_annotator() -> str:
    """git's user.name, else $USER: who is stored with every label change."""
    import getpass
    import subprocess

    try:
        name = subprocess.run(
            ["git", "config", "user.name"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        name = ""
    return name or getpass.getuser()


@cli.command()
@db_option
@neuron_target
@click.option("--text", default=None, help="A new label, written by you.")
@click.option(
    "--edit",
    "edited_from",
    type=ID,
    default=None,
    help="With --text: the text is an edit of this label id (its history records it).",
)
@click.option(
    "--explanation", "explanation_id", type=ID, default=None, help="An existing label's id."
)
@click.option("--accept", is_flag=True)
@click.option("--reject", is_flag=True)
@click.option("--needs-review", is_flag=True)
@click.option("--confirm", is_flag=True, help="Review: agree with an accepted label.")
@click.option("--dispute", is_flag=True, help="Review: disagree; the label goes to needs_review.")
@click.option("--undo", is_flag=True, help="Revert your latest change to this neuron.")
@click.option("--annotator", default=None, help="Default: git user.name, else $USER.")
@click.option(
    "--expect-version",
    type=ID,
    default=None,
    help="Refuse if the neuron's history moved past this version (from `history`).",
)
@format_option
def label(
    db_path: Path | None,
    model_name: str | None,
    layer: int,
    neuron: int,
    text: str | None,
    edited_from: int | None,
    explanation_id: int | None,
    accept: bool,
    reject: bool,
    needs_review: bool,
    confirm: bool,
    dispute: bool,
    undo: bool,
    annotator: str | None,
    expect_version: int | None,
    output_format: str,
) -> None:
    """Write, accept, reject or flag a neuron's label; every change goes into its history.

    \b
    Example:
      labeller label --layer 0 --neuron 9 --text 'fires on "def" at line starts' --accept
      labeller label --layer 0 --neuron 9 --edit 12 --text 'fires on "def" and "class"'
      labeller label --layer 0 --neuron 9 --explanation 12 --reject --annotator alice
      labeller label --layer 0 --neuron 9 --explanation 12 --confirm --annotator bob
    """
    status = _one_flag(
        {
            "--accept": (accept, LabelStatus.ACCEPTED.value),
            "--reject": (reject, LabelStatus.REJECTED.value),
            "--needs-review": (needs_review, LabelStatus.NEEDS_REVIEW.value),
        }
    )
    review = _one_flag(
        {
            "--confirm": (confirm, labels.Review.CONFIRM.value),
            "--dispute": (dispute, labels.Review.DISPUTE.value),
        }
    )
    if edited_from is not None and text is None:
        raise UserError("--edit ID needs --text: the edited label's new text")
    if sum(x is not None and x is not False for x in (text, explanation_id, undo or None)) != 1:
        raise UserError("give exactly one of --text, --explanation or --undo")
    if explanation_id is not None and status is None and review is None:
        raise UserError(
            "with --explanation, say --accept, --reject, --needs-review, --confirm or --dispute"
        )
    if review is not None and explanation_id is None:
        raise UserError("--confirm and --dispute review an existing label: add --explanation ID")
    who = annotator or default_annotator()
    new_status = None if status is None else LabelStatus(status)
    with Catalogue.open(db_path) as catalogue:
        ref = catalogue.neuron_ref(model_name, layer, neuron)
        entries: list[HistoryEntry] = []
        if undo:
            entries = labels.undo(catalogue, ref, annotator=who, expected_version=expect_version)
        elif text is not None:
            entries = labels.write_label(
                catalogue,
                ref,
                text,
                status=new_status or LabelStatus.PROPOSED,
                annotator=who,
                expected_version=expect_version,
                edited_from=edited_from,
            )
        else:
            assert explanation_id is not None  # exactly one of --text, --explanation, --undo
            expected = expect_version
            if review is not None:
                entries = labels.review(
                    catalogue,
                    ref,
                    explanation_id,
                    labels.Review(review),
                    annotator=who,
                    expected_version=expected,
                )
                expected = entries[-1].id  # a status given too changes the label as reviewed
            if new_status is not None:
                entries += labels.set_status(
                    catalogue,
                    ref,
                    explanation_id,
                    new_status,
                    annotator=who,
                    expected_version=expected,
                )
        version = catalogue.label_version(ref.id)
    if output_format == "json":
        click.echo(
            json.dumps(
                {"version": version, "changes": [e.model_dump(mode="json") for e in entries]},
                indent=2,
            )
        )
        return
    if not entries:
        click.echo("no change: the label already had that status")
    for entry in entries:
        click.echo(_history_line(entry))


def _one_flag(flags: dict[str, tuple[bool, str]]) -> str | None:
    """The value of the one flag given, if any; two that contradict each other are a usage
    error (otherwise the last would silently win)."""
    given = [name for name, (on, _) in flags.items() if on]
    if len(given) > 1:
        raise click.UsageError(f"{' and '.join(given)} exclude each other; give one")
    return flags[given[0]][1] if given else None


@cli.command()
@db_option
@neuron_target
@format_option
def history(
    db_path: Path | None, model_name: str | None, layer: int, neuron: int, output_format: str
) -> None:
    """Every change to a neuron's labels: who, when, what before, what after.

    \b
    Example:
      labeller history --layer 0 --neuron 9
    """
    with Catalogue.open(db_path, read_only=True) as catalogue:
        ref = catalogue.neuron_ref(model_name, layer, neuron)
        entries = catalogue.history(ref)
        version = catalogue.label_version(ref.id)
    if output_format == "json":
        click.echo(
            json.dumps(
                {"version": version, "entries": [e.model_dump(mode="json") for e in entries]},
                indent=2,
            )
        )
        return
    if not entries:
        click.echo(f"neuron {neuron_name(layer, neuron)} has no label history yet")
    for entry in entries:
        click.echo(_history_line(entry))


@cli.command()
@db_option
@neuron_target
@click.option("--annotator", default=None, help="Default: git user.name, else $USER.")
@format_option
def unseal(
    db_path: Path | None,
    model_name: str | None,
    layer: int,
    neuron: int,
    annotator: str | None,
    output_format: str,
) -> None:
    """Unseal a neuron's held-out windows (valid, test) for you, recorded in its history.

    After this, `show` and the TUI show you every window of the neuron, and the labels you write
    on it from then on are scored as not blind on valid and test. It cannot be undone.

    \b
    Example:
      labeller unseal --layer 0 --neuron 9 --annotator alice
    """
    who = annotator or default_annotator()
    with Catalogue.open(db_path) as catalogue:
        ref = catalogue.neuron_ref(model_name, layer, neuron)
        entries = labels.unseal(catalogue, ref, annotator=who)
        version = catalogue.label_version(ref.id)
    if output_format == "json":
        changes = [e.model_dump(mode="json") for e in entries]
        click.echo(json.dumps({"version": version, "changes": changes}, indent=2))
        return
    if not entries:
        click.echo(f"{printable(who)} had already unsealed {neuron_name(layer, neuron)}: no change")
    for entry in entries:
        click.echo(_history_line(entry))


def _rank_by_measure(
    db_path: Path | None,
    model_name: str | None,
    by: str,
    layers: str | None,
    limit: int | None,
    output_format: str,
) -> None:
    """`rank --by illusion|band-consistency`: neurons by a measure of their whole view."""
    import csv

    from labeller.neuron_measures import rank_by_measure

    with Catalogue.open(db_path, read_only=True) as catalogue:
        model = catalogue.resolve_model(model_name)
        layer_list = None if layers is None else parse_layers(layers, model.n_layers)
        rows = rank_by_measure(catalogue, model.name, by, layer_list, limit)
    if output_format == "json":
        click.echo(json.dumps([r.model_dump() for r in rows], indent=2))
        return
    if output_format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(MeasureRow.model_fields))
        writer.writeheader()
        for r in rows:
            writer.writerow(r.model_dump())
        return
    table = Table("layer", "neuron", by, "why", "label", caption=f"{model.name}, by {by}")
    for r in rows:
        table.add_row(
            str(r.layer),
            str(r.neuron),
            f"{r.value:.3f}",
            printable(r.detail),
            printable(r.label or ""),
        )
    StdoutConsole().print(table)


def _history_line(entry: HistoryEntry) -> str:
    def state(s: LabelState | None) -> str:
        return "-" if s is None else f'#{s.explanation_id} "{printable(s.text)}" [{s.status.value}]'

    edit = "" if entry.edited_from is None else f"  (edited from #{entry.edited_from})"
    return (
        f"{entry.at}  {printable(entry.annotator or '?')}  {entry.action.value}  "
        f"{state(entry.before)} -> {state(entry.after)}{edit}"
    )


@cli.command()
@db_option
@click.option(
    "--model", "model_name", default=None, help="Needed when the catalogue holds several."
)
@click.option(
    "--by",
    default="score",
    show_default=True,
    callback=lambda _ctx, _param, value: _rank_by(value),
    help="score, max, density, detector:NAME (neurons by their score against a detector, "
    "from `labeller detect`), illusion (how differently the neuron acts on its corpus "
    "subsets) or band-consistency[:DETECTOR] (the label's, or a detector's, lowest precision "
    "over activation bands 1 and up); see README.",
)
@click.option("--split", type=click.Choice(["valid", "test"]), default="valid", show_default=True)
@click.option("--layers", default=None, help="e.g. 0,2-5 (default: all scanned).")
@click.option(
    "--status",
    type=click.Choice(["proposed", "accepted", "rejected", "needs_review"]),
    default=None,
    help="Only labels with this status.",
)
@click.option(
    "--prediction",
    type=click.Choice(["expected_value", "integer", "rule"]),
    default=None,
    help="Compare scores of this kind only (default: expected_value if any, else integer, "
    "else rule).",
)
@click.option(
    "--simulator",
    default=None,
    help="Rank by this simulator's scores only (default: the one with the most scores of the "
    "kind ranked; the others are named on stderr).",
)
@click.option(
    "--blind",
    is_flag=True,
    help="Only blind scores: labels whose author saw none of the scored windows.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
def rank(
    db_path: Path | None,
    model_name: str | None,
    by: str,
    split: str,
    layers: str | None,
    status: str | None,
    prediction: str | None,
    blind: bool,
    simulator: str | None,
    limit: int | None,
    output_format: str,
) -> None:
    """Rank neurons by their label's score (unscored last), or by max or density, or by a
    measure of the whole neuron: illusion (subsets differ) or band-consistency (the label holds
    in every activation band); neurons without that measure are left out.

    Scores are compared like with like: one prediction kind (see --prediction) and one
    simulator (see --simulator), so a label scored by two simulators never gets the higher.
    With --blind, only scores whose label's author saw none of the scored windows count.

    \b
    Example:
      labeller rank --limit 50
      labeller rank --by score --split test --status accepted --format csv > ranked.csv
      labeller rank --blind --limit 20
      labeller rank --by detector:number --limit 10
      labeller rank --by illusion --limit 20
      labeller rank --by band-consistency:python.keyword --limit 10
    """
    from labeller.records import PredictionKind

    if by in ("illusion", "band-consistency") or by.startswith(BAND_CONSISTENCY_PREFIX):
        _rank_by_measure(db_path, model_name, by, layers, limit, output_format)
        return

    with Catalogue.open(db_path, read_only=True) as catalogue:
        model = catalogue.resolve_model(model_name)
        layer_list = None if layers is None else parse_layers(layers, model.n_layers)
        if by.startswith(DETECTOR_PREFIX):
            detector = by.removeprefix(DETECTOR_PREFIX)
            rows = _rank_by_detector(
                catalogue, model.name, detector, Split(split), layer_list, status, limit
            )
            _print_ranked(rows, output_format, f"{detector} detector scores: {split}")
            return
        kind = (
            PredictionKind(prediction)
            if prediction is not None
            else catalogue.rank_prediction(model.name, Split(split), simulator)
        )
        scored_by = catalogue.rank_simulators(model.name, Split(split), kind)
        if simulator is not None and simulator not in dict(scored_by):
            anyone = catalogue.rank_simulators(model.name, Split(split), None)
            known = ", ".join(name for name, _ in anyone) or "none"
            what = f"{kind} scores" if prediction is not None else "scores"
            raise UserError(
                f"simulator {simulator!r} has no {what} on {split} for {model.name}; "
                f"simulators with scores there: {known}"
            )
        if simulator is None and scored_by:
            simulator = scored_by[0][0]
            if len(scored_by) > 1:
                others = ", ".join(f"{name} ({n:,})" for name, n in scored_by[1:])
                click.echo(
                    f"ranking by {simulator}'s scores ({scored_by[0][1]:,}); also scored: "
                    f"{others}: pass --simulator NAME to rank by another",
                    err=True,
                )
        rows = catalogue.rank(
            model_name,
            by=by,
            split=Split(split),
            layers=layer_list,
            status=status,
            limit=limit,
            prediction=kind,
            blind=blind,
            simulator=simulator,
        )
    _print_ranked(
        rows,
        output_format,
        f"scores: {split}, {kind} predictions by {simulator or 'no simulator'} only"
        f"{', blind only' * blind}; ≈chance: not above the null's p95; "
        "seen: the label's author had seen the scored windows",
    )


DETECTOR_PREFIX = "detector:"
BAND_CONSISTENCY_PREFIX = "band-consistency:"


def _rank_by(value: str) -> str:
    """`rank --by`: a fixed order, a neuron measure, or `detector:NAME`."""
    if value in ("score", "max", "density", "illusion", "band-consistency"):
        return value
    for prefix in (DETECTOR_PREFIX, BAND_CONSISTENCY_PREFIX):
        if value.startswith(prefix) and value.removeprefix(prefix):
            return value
    raise click.BadParameter(
        f"{value!r}: use score, max, density, illusion, band-consistency, "
        "band-consistency:DETECTOR or detector:NAME (e.g. detector:number)",
        param_hint="--by",
    )


def _rank_by_detector(
    catalogue: Catalogue,
    model: str,
    detector: str,
    split: Any,
    layers: list[int] | None,
    status: str | None,
    limit: int | None,
) -> list[Any]:
    """Neurons by their score against one detector; an error naming the scored detectors if
    this one has no scores."""
    from labeller.catalogue.detectors import detector_names, rank_by_detector

    known = detector_names(catalogue, model, split)
    if detector not in known:
        raise UserError(
            f"--by detector:{detector}: no {split} scores of that detector for {model} "
            f"(scored: {', '.join(known) or 'none'}); run `labeller detect --detector NAME` "
            "or `--regex NAME=PATTERN` first"
        )
    return rank_by_detector(
        catalogue, model, detector, split=split, layers=layers, status=status, limit=limit
    )


def _print_ranked(rows: list[Any], output_format: str, caption: str) -> None:
    """`rank`'s rows as a table, JSON or CSV."""
    import csv

    fields = ["layer", "neuron", "score", "above_chance", "blind", "label", "source", "status"]
    if output_format == "json":
        click.echo(json.dumps([r.model_dump(include=set(fields)) for r in rows], indent=2))
        return
    if output_format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=[*fields, "max", "density"])
        writer.writeheader()
        for r in rows:
            writer.writerow(r.model_dump())
        return
    table = Table(
        "layer",
        "neuron",
        "score",
        "max",
        "density",
        "label",
        "source",
        "status",
        caption=caption,
    )
    for r in rows:
        table.add_row(
            str(r.layer),
            str(r.neuron),
            "-"
            if r.score is None
            else f"{r.score:.3f}"
            + (" ≈chance" * (r.above_chance is False))
            + (" seen" * (r.blind is False)),
            f"{r.max:.3f}",
            f"{100 * r.density:.2f}%",
            Text(printable(r.label or "-")),
            Text(printable(r.source or "-")),
            r.status or "unlabelled",
        )
    StdoutConsole().print(table)


@cli.command()
@db_option
@click.option(
    "--model", "model_name", default=None, help="Needed when the catalogue holds several."
)
@format_option
def agreement(db_path: Path | None, model_name: str | None, output_format: str) -> None:
    """Per annotator: labels written, accepted, rejected, reviewed; and pairwise agreement on
    the neurons both judged.

    \b
    Example:
      labeller agreement --db shared.db
    """
    from labeller.review import agreement as compute

    with Catalogue.open(db_path, read_only=True) as catalogue:
        counts, pairs = compute(catalogue.judgements(model_name))
    if output_format == "json":
        click.echo(
            json.dumps(
                {
                    "annotators": [c.model_dump() for c in counts],
                    "pairs": [{**p.model_dump(), "rate": p.rate} for p in pairs],
                },
                indent=2,
            )
        )
        return
    table = Table("annotator", "written", "accepted", "rejected", "reviewed")
    for c in counts:
        table.add_row(
            Text(printable(c.annotator)),
            str(c.written),
            str(c.accepted),
            str(c.rejected),
            str(c.reviewed),
        )
    console = StdoutConsole()
    console.print(table)
    if not pairs:
        console.print("no two annotators have judged the same neuron yet")
    for p in pairs:
        rate = "n/a" if p.rate is None else f"{100 * p.rate:.0f}%"
        console.print(
            f"{printable(p.first)} & {printable(p.second)}: agree on {p.agreed} of {p.both_judged} "
            f"neurons both judged ({rate})",
            markup=False,
        )


@cli.command()
@db_option
@click.argument("destination", type=click.Path(path_type=Path, dir_okay=False))
def backup(db_path: Path | None, destination: Path) -> None:
    """Copy the catalogue consistently, even while others are writing to it.

    An unfinished scan's checkpoint file (CATALOGUE.scan-ID.checkpoint) is copied beside the
    copy as DESTINATION.scan-ID.checkpoint, so the scan resumes from the backup.

    \b
    Example:
      labeller backup backups/catalogue-2026-11-25.db
    """
    with Catalogue.open(db_path, read_only=True) as catalogue:
        checkpoints = catalogue.backup(destination)
    click.echo(f"backed up {catalogue.path} to {destination} (full integrity check passed)")
    for checkpoint in checkpoints:
        click.echo(f"with an unfinished scan's checkpoint: {checkpoint}")


@cli.command()
@db_option
def check(db_path: Path | None) -> None:
    """Run SQLite's full integrity check on the catalogue; exit non-zero if it is damaged.

    Every open runs a quick check bounded in time; this one reads every page and index entry
    (seconds per GB). `backup` runs it too and refuses to copy a damaged catalogue.

    \b
    Example:
      labeller check --db db/labeller.db
    """
    with Catalogue.open(db_path, read_only=True, verify=False) as catalogue:
        problems = catalogue.integrity_problems()
    if problems:
        for problem in problems:
            click.echo(problem)
        raise UserError(
            f"{catalogue.path} is damaged ({len(problems)} problem(s) above); "
            "restore it from a backup"
        )
    click.echo(f"ok: {catalogue.path} passed the full integrity check")


@cli.command()
@db_option
@click.option(
    "--model", "model_name", default=None, help="Needed when the catalogue holds several."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "openai", "neuronpedia"]),
    default="json",
    show_default=True,
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="File to write (default: stdout); for neuronpedia, the folder to write (needed).",
)
@click.option("--layers", default=None, help="e.g. 0,2-5 (default: all scanned).")
@click.option(
    "--status",
    default="all",
    show_default=True,
    help="all, or only labels with this status (e.g. accepted).",
)
@click.option(
    "--min-score",
    type=float,
    default=None,
    help="Only labels whose top-and-random valid score is at least this.",
)
@click.option(
    "--neuronpedia-user",
    default=None,
    help="neuronpedia: the Neuronpedia user id every row is credited to "
    "(default: the bot user their seed creates).",
)
def export(
    db_path: Path | None,
    model_name: str | None,
    fmt: str,
    output: Path | None,
    layers: str | None,
    status: str,
    min_score: float | None,
    neuronpedia_user: str | None,
) -> None:
    """Export the catalogue: our versioned JSON, OpenAI neuron-explainer records, or the
    dataset folder Neuronpedia's importer reads. Streams neuron by neuron, so memory does not
    grow with the catalogue.

    \b
    Example:
      labeller export --format json -o catalogue.json
      labeller export --format openai --layers 0 --status accepted -o records.jsonl
      labeller export --format neuronpedia --status accepted -o np-datasets
    """
    from labeller.exchange import count_export, export_catalogue, export_neuronpedia
    from labeller.output_files import open_output

    if fmt == "neuronpedia" and output is None:
        raise UserError("--format neuronpedia writes a folder: give one with -o DIR")
    if fmt != "neuronpedia" and neuronpedia_user is not None:
        raise UserError("--neuronpedia-user is for --format neuronpedia only")

    with Catalogue.open(db_path, read_only=True) as catalogue:
        layer_list = None
        if layers is not None:
            n_layers = catalogue.resolve_model(model_name).n_layers
            layer_list = parse_layers(layers, n_layers)
        options: dict[str, Any] = {
            "fmt": fmt,
            "model": model_name,
            "layers": layer_list,
            "status": status,
            "min_score": min_score,
        }
        total = count_export(catalogue, **options)
        if fmt == "neuronpedia":
            assert output is not None
            del options["fmt"]
            with _progress(total, "exporting", "neurons") as advance:
                written = export_neuronpedia(
                    catalogue, output, on_progress=advance, user_id=neuronpedia_user, **options
                )
        elif output is None:
            written = export_catalogue(catalogue, sys.stdout, on_progress=None, **options)
        else:
            with (
                open_output(output) as handle,
                _progress(total, "exporting", "neurons") as advance,
            ):
                written = export_catalogue(catalogue, handle, on_progress=advance, **options)
    if output is not None:
        click.echo(f"exported {written:,} neurons as {fmt} to {output}", err=True)


@cli.command("import")
@db_option
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--annotator", default=None, help="Default: git user.name, else $USER.")
def import_(db_path: Path | None, file: Path, annotator: str | None) -> None:
    """Merge a `labeller export --format json` file into the catalogue.

    Importing twice changes nothing; both sides' label history is kept; a neuron accepted with
    different labels on the two sides, or a decision in the file older than ours, is reported as
    a conflict and left for a person. Changes the import decides are recorded under --annotator.

    \b
    Example:
      labeller import --db shared.db alice-export.json
    """
    from labeller.exchange import export_header, import_catalogue

    total = export_header(file).neuron_count
    with (
        Catalogue.open(db_path, create=True) as catalogue,
        _progress(total, "importing", "neurons") as advance,
    ):
        report = import_catalogue(
            catalogue, file, on_progress=advance, annotator=annotator or default_annotator()
        )
    click.echo(report.summary())
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    for conflict in report.conflicts:
        click.echo(f"conflict (left for a person): {printable(conflict)}", err=True)


@cli.command()
@click.option(
    "--model",
    "model_specs",
    multiple=True,
    required=True,
    help="Give twice: model A, then model B (demo name, HF name, local dir).",
)
@click.option("--dataset", default="demo", show_default=True, help="demo, a file/folder, HF name.")
@click.option(
    "--tokens", type=click.IntRange(min=1), default=100_000, show_default=True, help="Tokens read."
)
@click.option("--layers", default="all", show_default=True, help="Layers to compare, e.g. 0,2-5.")
@click.option("--ctx", type=click.IntRange(min=2), default=SCAN_DEFAULTS["ctx"], show_default=True)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=SCAN_BATCH_SIZE, show_default=True
)
@click.option(
    "--sample-tokens",
    type=click.IntRange(min=1),
    default=20_000,
    show_default=True,
    help="Tokens kept for histograms and near-zero shares.",
)
@click.option("--text-field", default="text", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--db",
    "db_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Catalogue with both models' labels and scores: label rates and agreement.",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("compare"),
    show_default=True,
    help="Folder for report.md, report.json and the PNG figures.",
)
@click.option("--dpi", type=click.IntRange(min=20), default=80, show_default=True)
@model_load_options
def compare(
    model_specs: tuple[str, ...],
    dataset: str,
    tokens: int,
    layers: str,
    ctx: int,
    batch_size: int,
    sample_tokens: int,
    text_field: str,
    seed: int,
    db_path: Path | None,
    out: Path,
    dpi: int,
    device: str,
    dtype: str,
) -> None:
    """Run two models over the same tokens and write a report: each neuron's best match in the
    other model (against a shuffled baseline), activation distributions per stage (kurtosis,
    skew, near-zero share; SoLU's LayerNorm scale), and with --db the share of neurons with a
    well-scoring label and whether matched neurons' labels agree. Needs matplotlib
    (pip install 'labeller[plots]').

    \b
    Example:
      labeller compare --model demo-gelu-1l --model demo-solu-1l -o docs/compare
      labeller compare --model solu-1l --model gelu-1l --tokens 1000000 --db db/labeller.db
    """
    from labeller.compare.collect import (
        CompareSettings,
        check_comparable,
        compare_models,
        comparison_windows,
    )
    from labeller.compare.report import write_report
    from labeller.model.loading import load_model
    from labeller.plot import pyplot

    if len(model_specs) != 2:
        raise UserError(f"compare needs --model exactly twice (A and B), got {len(model_specs)}")
    pyplot()  # no matplotlib: say so before any model runs
    check_dataset_spec(dataset)
    catalogue = Catalogue.open(db_path, read_only=True) if db_path is not None else None
    with _status(f"loading {model_specs[0]} and {model_specs[1]}"):
        a, b = (load_model(spec, device=device, dtype=dtype) for spec in model_specs)
    chosen = parse_layers(layers, min(a.n_layers, b.n_layers))
    check_comparable(a, b, chosen)
    if ctx > min(a.context_limit, b.context_limit):
        raise UserError(f"--ctx {ctx} is longer than a model's context; use a smaller --ctx")
    windows = comparison_windows(a, dataset, tokens, ctx, seed, text_field)
    if len(windows) <= batch_size:
        raise UserError(
            f"{dataset} gave {len(windows)} full windows of {ctx} tokens, but the shuffled "
            f"baseline needs more than one batch ({batch_size}); raise --tokens or lower "
            "--batch-size"
        )
    settings = CompareSettings(dataset, ctx, seed, batch_size, sample_tokens)
    try:
        with _progress(len(windows) * ctx, label="comparing") as advance:
            report = compare_models(a, b, windows, chosen, settings, catalogue, advance)
    finally:
        if catalogue is not None:
            catalogue.close()
    written = write_report(report, out, dpi)
    first = report.layers[0].a_to_b
    medians = [
        "none" if v is None else f"{v:.3f}" for v in (first.median_r, first.shuffled_median_r)
    ]
    click.echo(
        f"compared {a.name} and {b.name} on {report.tokens:,} tokens: median best-match r "
        f"{medians[0]} (shuffled windows {medians[1]}), layer {report.layers[0].layer}; "
        f"report in {written[0]}"
    )


@cli.command()
@db_option
@click.option("--model", "model_name", default=None, help="Default: the catalogue's only model.")
@click.option("--layer", type=ID, required=True)
@click.option("--neuron", type=ID, default=None, help="A neuron's figures; without: the layer's.")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("figures"),
    show_default=True,
    help="Folder for the figures.",
)
@click.option(
    "--formats",
    type=click.Choice(["png,svg", "png", "svg"]),
    default="png,svg",
    show_default=True,
)
@click.option("--dpi", type=click.IntRange(min=20), default=100, show_default=True)
@click.option(
    "--detector",
    "detector_names",
    multiple=True,
    help="A detector whose per-band precision to draw next to the label's (repeatable; `all` "
    "for every one). Default: the neuron's best stored detectors, as `show` gives them.",
)
@click.option(
    "--dla/--no-dla",
    default=True,
    show_default=True,
    help="A neuron's DLA vs activation figure (loads the model to compute DLA per token).",
)
@model_load_options
def plot(
    db_path: Path | None,
    model_name: str | None,
    layer: int,
    neuron: int | None,
    out: Path,
    formats: str,
    dpi: int,
    detector_names: tuple[str, ...],
    dla: bool,
    device: str,
    dtype: str,
) -> None:
    """Write figures as PNG and SVG: a neuron's activation histogram, per-band precision of
    its label and detectors, and direct logit attribution against activation per token (over
    its top, random and DLA windows; the model computes what the catalogue does not store), or
    a layer's label scores against their null control and cos(w_in, w_out) against kurtosis.
    Figures the catalogue has no data for are skipped with a note. Needs matplotlib
    (pip install 'labeller[plots]').

    \b
    Example:
      labeller plot --db db/demo.db --model demo-solu-1l --layer 0 --neuron 9
      labeller plot --db db/demo.db --model demo-gelu-1l --layer 0 --neuron 9 --detector number
      labeller plot --db db/demo.db --model demo-solu-1l --layer 0 -o figures/solu
    """
    from labeller.catalogue.browse import neuron_token_ids
    from labeller.detect.registry import resolve
    from labeller.plot import pyplot
    from labeller.plot.catalogue_figures import dla_series, layer_figures, neuron_figures

    pyplot()  # no matplotlib: say so before reading anything
    chosen = tuple(formats.split(","))
    if detector_names and neuron is None:
        raise UserError("--detector draws a neuron's per-band precision: give --neuron N too")
    detectors = resolve(detector_names, []) if detector_names else None
    with Catalogue.open(db_path, read_only=True) as catalogue:
        model = catalogue.resolve_model(model_name)
        if layer >= model.n_layers:
            raise UserError(f"{model.name} has layers 0-{model.n_layers - 1}; got --layer {layer}")
        if neuron is not None:
            view = catalogue.neuron_view(model.name, layer, neuron)
            series = None
            if dla:
                from labeller.model.loading import load_model

                token_ids = neuron_token_ids(catalogue, model.name, layer, neuron)
                loaded = load_model(model.name, device=device, dtype=dtype)
                series = dla_series(view, token_ids, loaded)
            out.mkdir(parents=True, exist_ok=True)
            plotted = neuron_figures(view, out, dpi, chosen, detectors, series)
        else:
            out.mkdir(parents=True, exist_ok=True)
            plotted = layer_figures(catalogue, model.name, layer, out, dpi, chosen)
    for note in plotted.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {len(plotted.paths)} figure files to {out}")
    for path in plotted.paths:
        click.echo(f"  {path}")


@cli.command("train-demo")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("demo-models"),
    show_default=True,
    help="Directory for the two trained model directories.",
)
@click.option("--tokens", type=click.IntRange(min=1000), default=None, help="Training tokens.")
@click.option("--seed", type=int, default=0, show_default=True)
def train_demo(out: Path, tokens: int | None, seed: int) -> None:
    """Rebuild the demo corpus and tokenizer and train the demo GELU and SoLU models.

    The bundled demo models were made by this command; rerun it to reproduce them.

    \b
    Example:
      labeller train-demo --out demo-models
      labeller scan --model demo-models/demo-solu-1l --dataset demo --tokens 200000
    """
    from labeller.demo.train import train_demo_models

    kwargs: dict[str, Any] = {"seed": seed}
    if tokens is not None:
        kwargs["tokens"] = tokens
    numbers = train_demo_models(out, **kwargs)
    click.echo(json.dumps(numbers, indent=2))


@cli.command()
@db_option
@click.option("--annotator", default=None, help="Default: git user.name, else $USER.")
@click.option("--model", "model_name", default=None, help="Start on this model's neurons.")
@click.option(
    "--llm-config",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="LABELLER_LLM_CONFIG",
    default=None,
    help="TOML [llm] settings for LLM scoring and suggested tests.",
)
def annotate(
    db_path: Path | None, annotator: str | None, model_name: str | None, llm_config: Path | None
) -> None:
    """Open the annotation TUI: browse neurons, test them live, perturb inputs, label them.

    Every action is stored with the annotator's name. Press ? inside for the keys.

    \b
    Example:
      labeller annotate --annotator alice
    """
    from labeller.tui.app import run_annotate

    with Catalogue.open(db_path, read_only=True):
        pass  # a missing or foreign catalogue is a one-line error before the screen opens
    run_annotate(db_path, annotator or default_annotator(), model_name, llm_config)


@cli.command()
@click.option(
    "--db",
    "db_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEMO_DB,
    show_default=True,
    help="Where the demo catalogue is built.",
)
@click.option("--tokens", type=click.IntRange(min=1000), default=DEMO_TOKENS, show_default=True)
@click.option("--annotator", default=None, help="Default: git user.name, else $USER.")
@click.option("--no-tui", is_flag=True, help="Build the catalogue and print a neuron instead.")
@click.option(
    "--llm-config",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="LABELLER_LLM_CONFIG",
    default=None,
    help="TOML [llm] settings, if an LLM endpoint is available.",
)
def demo(
    db_path: Path, tokens: int, annotator: str | None, no_tui: bool, llm_config: Path | None
) -> None:
    """Open the TUI on the demo catalogue: both bundled models scanned over the demo corpus,
    labelled and scored by the offline baseline, the built-in feature detectors scored on every
    neuron. Needs no network; the first run builds it, and an interrupted build resumes.

    \b
    Example:
      labeller demo
    """
    from labeller.demo.build import (
        build_demo_model,
        demo_detectors,
        label_offline,
        missing_demo_models,
        undetected_demo_neurons,
    )

    with Catalogue.open(db_path, create=True) as catalogue:
        for name in missing_demo_models(catalogue):
            click.echo(f"building the demo: scanning {name} over {tokens:,} tokens", err=True)
            with _progress(tokens) as advance:
                build_demo_model(catalogue, name, tokens, on_progress=advance)
        for name, refs in undetected_demo_neurons(catalogue).items():
            # Labelling comes before detection: an interrupted one is finished here.
            label_offline(catalogue, catalogue.neuron_refs(name, None, None))
            detectors = demo_detectors()
            click.echo(
                f"building the demo: scoring {len(detectors)} feature detectors on "
                f"{len(refs):,} neurons of {name}",
                err=True,
            )
            _detect_with_progress(catalogue, refs, detectors)
        if no_tui:
            for model_name, layer, neuron in catalogue.strongest_neurons(limit=1):
                print_neuron(catalogue.neuron_view(model_name, layer, neuron), 5)
    if no_tui:
        click.echo(
            f"\nThe demo catalogue is {db_path}. Try:\n"
            f"  labeller annotate --db {db_path}\n"
            f"  labeller rank --db {db_path} --model demo-solu-1l --limit 10\n"
            f"  labeller trace --model demo-solu-1l --layer 0 --neuron 9 --text 'def main():'"
        )
        return
    from labeller.tui.app import run_annotate

    run_annotate(db_path, annotator or default_annotator(), None, llm_config)


@contextmanager
def _new_catalogue_kept_only_if_used(db_path: Path | None) -> Iterator[Catalogue]:
    """Open (creating) a catalogue for a scan; if the file is new and the command fails before
    storing anything, remove it again, so a failed first scan leaves no empty catalogue."""
    path = db_path or default_db_path()
    new = not path.exists() or path.stat().st_size == 0
    catalogue = Catalogue.open(path, create=True)
    try:
        with catalogue:
            yield catalogue
    except BaseException:
        if new:
            with Catalogue.open(path, read_only=True) as check:
                unused = not check.models()
            if unused:
                for leftover in (path, *(Path(f"{path}{x}") for x in ("-wal", "-shm"))):
                    leftover.unlink(missing_ok=True)
        raise


class _status:
    """A spinner on stderr while something slow happens (model loading)."""

    def __init__(self, message: str) -> None:
        self.console = Console(stderr=True)
        self.status = self.console.status(message)

    def __enter__(self) -> None:
        self.status.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.status.__exit__(*exc)


class RateColumn(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.1f} {self.unit}/s")


class StatusColumn(ProgressColumn):
    """Text from a callable, read at every refresh (e.g. LLM retries while no item finishes)."""

    def __init__(self, status: Callable[[], str]) -> None:
        super().__init__()
        self.status = status

    def render(self, task: Task) -> Text:
        return Text(self.status(), style="yellow")


class _progress:
    """Progress bar on stderr with rate and ETA; yields a callback taking the count done."""

    def __init__(
        self,
        total: int | None,
        label: str = "scanning",
        unit: str = "tokens",
        status: Callable[[], str] | None = None,
    ) -> None:
        console = Console(stderr=True)
        self.progress = Progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            RateColumn("tok" if unit == "tokens" else unit),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            *([StatusColumn(status)] if status else []),
            console=console,
            # redrawn ten times a second on a terminal; into a file or pipe only the last frame
            auto_refresh=console.is_terminal,
        )
        # a total from a file's header may be wrong; an unknown total beats `1/-3`
        known = total if total is not None and total >= 0 else None
        self.task = self.progress.add_task("scan", total=known)
        self.started = False
        self.seen = 0

    def __enter__(self) -> Callable[[int], None]:
        return self.advance

    def advance(self, seen: int) -> None:
        """Appears with the first batch, so input errors found earlier print alone."""
        if not self.started:
            self.progress.start()
            self.started = True
        self.seen = seen
        self.progress.update(self.task, completed=seen)

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.progress.stop()


def main() -> None:
    """The `labeller` command. Every object there is when it starts (the modules of the
    command line and the catalogue: some 46,000) is frozen out of
    Python's cyclic garbage collector, which would otherwise walk them again in every full
    collection that importing torch sets off: 0.20 s of collections in a scan's start-up, 0.07
    s with them frozen. On the way out every object is frozen too: the last collection at exit
    walked every object that torch and the model had made (0.3 s for torch alone, 1.0-1.2 s
    after a demo scan), only to free memory the system takes back anyway."""
    gc.freeze()
    try:
        cli()
    finally:
        gc.freeze()
