"""Builders shared by tests (a module of its own: every tests folder may have a conftest)."""

from __future__ import annotations

import random
from pathlib import Path

from labeller.records import ScanParams

WORDS = [
    *[
        "the",
        "neuron",
        "fires",
        "on",
        "def",
        "class",
        "return",
        "import",
        "from",
        "while",
        "for",
        "if",
        "else",
        "print",
        "self",
        "value",
    ],
    *[
        "list",
        "dict",
        "string",
        "token",
        "model",
        "layer",
        "activation",
        "window",
        "corpus",
        "python",
        "code",
        "text",
        "and",
    ],
    "of",
    "to",
]


def synthetic_documents(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        lines = []
        for _ in range(rng.randint(1, 12)):
            lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 14))))
        docs.append("\n".join(lines))
    return docs


def scan_params(model_dir: Path, corpus: Path, **overrides: object):
    values: dict[str, object] = {
        "model": str(model_dir),
        "dataset": str(corpus),
        "layers": [0, 1],
        "ctx": 16,
        "top_k": 6,
        "random": 7,
        "histogram_bins": 32,
    }
    values.update(overrides)
    return ScanParams(**values)


def run_cli(*args: object, env: dict[str, str | None] | None = None, ok: bool = True):
    """Invoke the CLI in-process; with ok, fail the test (showing stderr) on a non-zero exit."""
    from click.testing import CliRunner

    from labeller.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], env=env)
    if ok:
        assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    return result


def scanned_catalogue(path: Path, model, params, batch_size: int = 8) -> Path:
    """A catalogue at `path` holding one finished scan (no labels yet)."""
    from labeller.catalogue import Catalogue
    from labeller.scan.runner import run_scan

    with Catalogue.open(path, create=True) as catalogue:
        run_scan(catalogue, model, params, batch_size=batch_size)
    return path


def llm_config_file(tmp_path: Path, base_url: str, extra: str = "") -> Path:
    """An [llm] table for the local test server: fast retries, so failures show in seconds."""
    path = tmp_path / "llm.toml"
    path.write_text(
        f'[llm]\nbase_url = "{base_url}"\nmax_concurrency = 4\ntimeout_s = 5\n'
        "backoff_base_s = 0.01\nbackoff_cap_s = 0.05\nmax_retries = 2\n" + extra
    )
    return path


def sharded_scan_worker(
    rank: int,
    world_size: int,
    init_file: str,
    db: str,
    model_dir: str,
    params_json: str,
    batch_size: int,
    stop_after: int | None,
) -> None:
    """One rank of a sharded scan (for torch.multiprocessing.spawn): joins a gloo group through
    `init_file`; rank 0 writes `db`, and asks to stop after `stop_after` steps when given."""
    import itertools

    import torch.distributed as dist

    from labeller.catalogue import Catalogue
    from labeller.errors import ScanInterrupted
    from labeller.model.loading import load_model
    from labeller.scan import distributed
    from labeller.scan.distributed import World
    from labeller.scan.runner import run_scan

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    together = False
    try:
        model = load_model(model_dir, device="cpu")
        params = ScanParams.model_validate_json(params_json)
        steps = itertools.count(1)
        stop = (lambda: next(steps) >= stop_after) if stop_after and rank == 0 else None
        catalogue = Catalogue.open(Path(db), create=True) if rank == 0 else None
        try:
            run_scan(
                catalogue,
                model,
                params,
                batch_size=batch_size,
                stop_requested=stop,
                world=World(rank, world_size, rank),
            )
        except ScanInterrupted:
            pass
        finally:
            if catalogue is not None:
                catalogue.close()
        together = True
    finally:
        distributed.finish(together)  # as `labeller scan` under torchrun leaves the group


def labelled_catalogue(path: Path, model, corpus: Path, label_layers: list[int]) -> Path:
    """The model scanned over `corpus` (all layers, 16-token windows), the neurons of
    `label_layers` labelled and scored on valid by the offline baseline (with a null control)."""
    from labeller.catalogue import Catalogue
    from labeller.demo.build import scan_and_label_offline
    from labeller.records import ScanParams

    params = ScanParams(
        model=model.name,
        dataset=str(corpus),
        layers=list(range(model.n_layers)),
        ctx=16,
        top_k=8,
        random=6,
    )
    with Catalogue.open(path, create=True) as catalogue:
        scan_and_label_offline(catalogue, model, params, batch_size=4, label_layers=label_layers)
    return path
