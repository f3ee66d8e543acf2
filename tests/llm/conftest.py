"""Fixtures for LLM tests: a real OpenAI-compatible server on 127.0.0.1 per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_openai import FakeOpenAI


@pytest.fixture()
def fake_openai() -> Iterator[FakeOpenAI]:
    """A started server with the default echo responder, no latency, logprobs supported."""
    with FakeOpenAI() as server:
        yield server
