"""How `explain` and `score` fail against a real local OpenAI-compatible server: a refused key,
an unknown model or no endpoint stops the run at once with one line; the failures that remain
are summarised by cause with a non-zero exit; Ctrl-C stops cleanly and a rerun continues."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from builders import llm_config_file, scan_params, scanned_catalogue
from builders import run_cli as run
from fake_openai import FakeOpenAI, Reply, is_explainer_request, neuron_responder

from labeller.catalogue import Catalogue

MODEL = "fake-model"


@pytest.fixture()
def db(tmp_path, tiny_model, tiny_model_dir, tiny_corpus) -> Path:
    params = scan_params(tiny_model_dir, tiny_corpus, top_k=8, random=6)
    return scanned_catalogue(tmp_path / "c.db", tiny_model, params)


def llm_run(command: str, db: Path, config: Path, *flags: str):
    role = "--explainer" if command == "explain" else "--simulator"
    wide = {"COLUMNS": "200"}  # the progress bar on one line
    return run(command, "--db", db, role, MODEL, "--llm-config", config, *flags, env=wide, ok=False)


def failures(db: Path) -> int:
    with Catalogue.open(db) as catalogue:
        return sum(
            len(catalogue.failures(ref.id)) for ref in catalogue.neuron_refs(None, None, None)
        )


@pytest.mark.parametrize(
    ("command", "status", "says"),
    [
        ("explain", 401, "refused the API key (HTTP 401: bad key); check OPENAI_API_KEY"),
        ("score", 403, f"does not let this API key use {MODEL} (HTTP 403: bad key)"),
        ("explain", 404, f"has no model {MODEL} (HTTP 404: bad key); check the model name"),
    ],
)
def test_a_refused_key_or_unknown_model_stops_the_run_at_once(db, tmp_path, command, status, says):
    run("explain", "--db", db, "--layer", "1")  # baseline labels, for score to score
    with FakeOpenAI(neuron_responder) as server:
        server.fail_always(status=status, error="bad key")
        url = server.base_url
        result = llm_run(command, db, llm_config_file(tmp_path, url), "--layer", "1")
        calls = server.calls
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: the endpoint at {url} ")
    assert says in errors[0] and "Traceback" not in result.stderr
    assert calls <= 4  # the calls in flight at the first answer (max_concurrency), of 48 neurons
    assert failures(db) == 0  # nothing to redo neuron by neuron: the run never really started
    assert f"{command}: " not in result.stdout  # no summary of a run that did not happen


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_endpoint_stops_the_run_with_the_bar_showing_retries(db, tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    result = llm_run("explain", db, llm_config_file(tmp_path, url), "--layer", "1")
    assert result.exit_code == 2
    assert f"error: cannot reach the endpoint at {url} (connection error" in result.stderr
    assert "check --base-url / OPENAI_BASE_URL and that the server is running" in result.stderr
    # The bar was up before any neuron finished, and counted the retries as they happened.
    assert re.search(
        r"explaining .* 0/48 neurons .* retries \d+ \(last: connection error\)", result.stderr
    )
    assert failures(db) == 0


def test_failures_are_summarised_by_cause_and_exit_1(db, tmp_path):
    """Per-neuron failures do not stop the run; the end line groups them by cause."""
    roles: dict[str, str] = {}
    lock = threading.Lock()

    def responder(request: dict) -> Reply:
        assert is_explainer_request(request)
        with lock:  # first neuron's prompt: server errors; next two: garbage; the rest: fine
            role = roles.setdefault(request["messages"][-1]["content"], "0123"[min(len(roles), 3)])
        if role == "0":
            return Reply(status=500, error="overloaded")
        if role in "12":
            return Reply(content="<start>\nthe\t3\n<end>")
        return neuron_responder(request)

    with FakeOpenAI(responder) as server:
        config = llm_config_file(tmp_path, server.base_url)
        result = llm_run("explain", db, config, "--layer", "0", "--neurons", "0-3")
    assert result.exit_code == 1
    assert (
        "explain: 4 neurons, 1 labels written, 3 failed: 2 unparseable reply, "
        "1 server error (HTTP 5xx) (kept in failed_attempts)"
    ) in result.stdout
    assert failures(db) == 3
    assert re.search(r"LLM: \d+ calls, 2 retries", result.stdout)  # 500, retried twice


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_a_rerun_continues(db, tmp_path):
    # Calls after the 12th are held until Ctrl-C has been sent: on a busy machine the run could
    # otherwise finish all 48 neurons before the signal arrives.
    signalled = threading.Event()
    answered = iter(range(10**6))

    def held_after_twelve(request: dict) -> Reply:
        if next(answered) >= 12:
            signalled.wait(timeout=30)
        return neuron_responder(request)

    with FakeOpenAI(held_after_twelve, latency_s=0.3) as server:
        config = llm_config_file(tmp_path, server.base_url)
        command = [sys.executable, "-m", "labeller", "explain", "--db", str(db)]
        command += ["--explainer", MODEL, "--llm-config", str(config), "--layer", "1"]
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ,
            # As from a terminal: a test run started in the background inherits SIGINT ignored,
            # which Python (and so asyncio's Ctrl-C handling) then leaves ignored.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 60
        while server.calls < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        masks = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
        masks = [line for line in masks if line.startswith(("SigBlk", "SigIgn", "SigCgt"))]
        proc.send_signal(signal.SIGINT)
        signalled.set()
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, (stderr, server.calls, masks)
        (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert re.fullmatch(
            r"error: interrupted after \d+ of 48 neurons; finished work is kept, rerun to continue",
            line,
        )
        assert "Aborted!" not in stderr + stdout and "Traceback" not in stderr
        with Catalogue.open(db) as catalogue:
            done = sum(
                bool(catalogue.explanations_of(ref.id))
                for ref in catalogue.neuron_refs(None, [1], None)
            )
        assert 0 < done < 48

        server.latency_s = 0
        rerun = run(
            "explain", "--db", db, "--explainer", MODEL, "--llm-config", config, "--layer", "1"
        )
        assert f"explain: 48 neurons, {48 - done} labels written, {done} already done" in (
            rerun.stdout
        )
