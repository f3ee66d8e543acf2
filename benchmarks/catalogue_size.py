"""What a finished demo scan leaves in the catalogue, and what the scan wrote to get there.

Runs `labeller scan` (demo-solu-1l over the demo corpus, defaults: ctx 64, top-k 20, random 20,
4 windows a band) as its own process into a new catalogue, and prints the file's bytes per
neuron with each table's share (SQLite's `dbstat`), its free pages, and the bytes the scan
process wrote (`/proc/self/io` read as it exits: `wchar`, every byte it passed to write calls,
whatever the file, WAL, journal and checkpoint files included; and `write_bytes`, what it sent
towards the disk) as a multiple of the final file's size.

    python benchmarks/catalogue_size.py                 # 200,000 tokens
    python benchmarks/catalogue_size.py --tokens 50000 --db /tmp/kept.db
    python benchmarks/catalogue_size.py --subset-top-k 0  # no per-subset top windows
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing
from pathlib import Path

# Runs the CLI in this process, counting the checkpoints it saves (their files are gone when the
# scan completes), then reports the process's I/O counters on the last line.
_CHILD = """
import json, sys
from labeller.catalogue import Catalogue
from labeller.cli import cli
saved = []
save = Catalogue.save_checkpoint
def counted(self, scan_id, state, **kwargs):
    saved.append(len(state))
    return save(self, scan_id, state, **kwargs)
Catalogue.save_checkpoint = counted
try:
    cli.main(sys.argv[1:], prog_name="labeller", standalone_mode=False)
finally:
    io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
    counters = {k: int(v) for k, v in io.items()}
    counters.update(checkpoints=len(saved), checkpoint_bytes=sum(saved))
    print(json.dumps(counters))
"""


def scan(db: Path, model: str, dataset: str, tokens: int, extra: list[str]) -> dict[str, int]:
    args = ["scan", "--model", model, "--dataset", dataset, "--tokens", str(tokens), "--db", db]
    args += extra
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"the scan failed:\n{done.stderr[-2000:]}")
    counters: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return counters


def file_facts(db: Path) -> tuple[int, int, float, dict[str, int]]:
    """Neurons, file bytes, free-page share, and bytes of pages per table (indexes included)."""
    with closing(sqlite3.connect(db)) as conn:
        neurons = conn.execute("select count(*) from neurons").fetchone()[0]
        pages = conn.execute("pragma page_count").fetchone()[0]
        free = conn.execute("pragma freelist_count").fetchone()[0]
        tables = {
            str(name): int(size)
            for name, size in conn.execute(
                """select coalesce(m.tbl_name, d.name), sum(d.pgsize) from dbstat d
                left join sqlite_master m on m.name = d.name group by 1 order by 2 desc"""
            )
        }
    return neurons, db.stat().st_size, free / max(pages, 1), tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-solu-1l")
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument(
        "--subset-top-k",
        type=int,
        default=None,
        help="passed to the scan (0: no per-subset top windows; default: the scan's)",
    )
    parser.add_argument("--db", type=Path, default=None, help="keep the catalogue at this new path")
    args = parser.parse_args()
    if args.db is not None and args.db.exists():
        sys.exit(f"{args.db} exists; pass a new path")
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "scan.db"
        extra = [] if args.subset_top_k is None else ["--subset-top-k", str(args.subset_top_k)]
        io = scan(db, args.model, args.dataset, args.tokens, extra)
        neurons, size, free, tables = file_facts(db)
        leftovers = sorted(p.name for p in db.parent.iterdir() if p.name.startswith(f"{db.name}-"))
    print(
        f"{args.model}, {args.tokens:,} tokens: {neurons} neurons, {size:,} bytes "
        f"({size / neurons:,.0f} bytes per neuron), {free:.1%} free pages"
    )
    print(
        "  per neuron: "
        + ", ".join(f"{name} {value / neurons:,.0f}" for name, value in tables.items() if value)
    )
    print(
        f"written by the scan: {io['wchar']:,} bytes in write calls ({io['wchar'] / size:.2f}x "
        f"the file), {io['write_bytes']:,} sent towards the disk "
        f"({io['write_bytes'] / size:.2f}x; {io['cancelled_write_bytes']:,} of it cancelled "
        f"by truncation); files left beside it: {leftovers or 'none'}"
    )
    print(
        f"  of which {io['checkpoints']} checkpoint(s) of the scan's state: "
        f"{io['checkpoint_bytes']:,} bytes ({io['checkpoint_bytes'] / size:.2f}x the file); "
        f"the rest: {(io['wchar'] - io['checkpoint_bytes']) / size:.2f}x"
    )


if __name__ == "__main__":
    main()
