"""Ctrl-C during a real `labeller scan` process: consistent catalogue, and the rerun resumes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builders import synthetic_documents


@pytest.mark.slow
def test_sigint_checkpoints_and_rerun_resumes(tmp_path: Path, tiny_model_dir: Path):
    corpus = tmp_path / "big.jsonl"
    with corpus.open("w") as handle:
        for text in synthetic_documents(2500, seed=5):
            handle.write(json.dumps({"text": text}) + "\n")
    db = tmp_path / "c.db"
    command = [
        sys.executable,
        "-m",
        "labeller",
        "scan",
        "--db",
        str(db),
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(corpus),
        "--ctx",
        "16",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "1",  # the first checkpoint (and the scan's row) after a second
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if db.exists():
            with sqlite3.connect(db) as conn:
                tables = {r[0] for r in conn.execute("select name from sqlite_master")}
                if "scans" in tables and conn.execute("select count(*) from scans").fetchone()[0]:
                    break
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        status, tokens = conn.execute("select status, tokens_seen from scans").fetchone()
        assert status == "interrupted" and tokens > 0
    assert (tmp_path / "c.db.scan-1.checkpoint").stat().st_size > 0
    with sqlite3.connect(db) as conn:
        # The checkpoint is a file beside the catalogue, not pages inside it.
        assert conn.execute("select count(*) from scan_checkpoints").fetchone()[0] == 0
        assert conn.execute("select count(*) from neurons").fetchone()[0] == 0

    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming scan 1 at {tokens:,} tokens" in rerun.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("select status from scans").fetchall() == [("complete",)]
    assert not (tmp_path / "c.db.scan-1.checkpoint").exists()
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from neurons").fetchone()[0] == 96
