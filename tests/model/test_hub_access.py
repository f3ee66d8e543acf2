"""Loading from the Hugging Face hub without a network: one line at once, or the local cache."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def offline_env(home: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE" and "PROXY" not in k.upper()
    }
    return env | {"HF_HOME": str(home), "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}


def test_an_unreachable_hub_is_one_line_at_once(tmp_path):
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "labeller",
            "scan",
            "--db",
            str(tmp_path / "c.db"),
            "--model",
            "some-org/some-model",
            "--dataset",
            "demo",
        ],
        env=offline_env(tmp_path / "hf"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot reach the Hugging Face hub")
    assert "some-org/some-model" in lines[0] and "local cache" in lines[0]
    assert "Retry" not in result.stderr
    assert time.monotonic() - started < 60  # the hub client's own retries take 30 s more
    assert not (tmp_path / "c.db").exists()


def test_an_unreachable_hub_loads_a_cached_model_quietly(tmp_path, tiny_hf_dir):
    snapshot = tmp_path / "hf" / "hub" / "models--local--tiny" / "snapshots" / "abc123"
    shutil.copytree(tiny_hf_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    script = "from labeller.model.loading import load_model; print(load_model('local/tiny').d_mlp)"
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=offline_env(tmp_path / "hf"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1].isdigit()
    assert "Retry" not in result.stderr
