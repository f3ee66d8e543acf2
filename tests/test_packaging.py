"""The wheel ships what the code reads (prompts, demo assets, the kernels' C source) and nothing
of the user's: no catalogue from db/."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_holds_prompts_and_assets_but_no_catalogue(tmp_path: Path) -> None:
    source = tmp_path / "src"
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in tracked:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    (source / "db" / "labeller.db").write_bytes(b"a private catalogue")
    (source / "db" / "demo.db").write_bytes(b"a local demo catalogue")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("labeller-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith(".db") or "/_data/db" in n]
    assert "labeller/_data/prompts/explainer.toml" in names
    assert "labeller/demo/assets/demo-solu-1l/model.safetensors" in names
    assert "labeller/scan/kernels.c" in names  # the scan builds it on first use
