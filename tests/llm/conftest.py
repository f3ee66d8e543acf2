"""Fixtures for LLM tests: a real OpenAI-compatible server on 127.0.0.1 per test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests directories are not packages; make `from fake_openai import FakeOpenAI` work from here.
sys.path.insert(0, str(Path(__file__).parent))

from fake_openai import FakeOpenAI


@pytest.fixture()
def fake_openai() -> Iterator[FakeOpenAI]:
    """A started server with the default echo responder, no latency, logprobs supported."""
    with FakeOpenAI() as server:
        yield server
