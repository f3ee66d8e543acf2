"""Golden prompts: the exact text sent for a fixed record. A change here must bump the template
version in prompts/*.toml (every label records the version that produced it)."""

from __future__ import annotations

from pathlib import Path

from labeller.explain.explainer import explainer_request
from labeller.explain.prompts import activation_records, load_template
from labeller.explain.simulator import simulator_request

GOLDEN = Path(__file__).parent / "golden"

WINDOWS = [
    (
        ["def", " add", "(", "a", "):", "\n", "    ", "return", " a"],
        [0.0, 0.1, 0, 0, 0, 0, 0, 2.4, 0.3],
    ),
    ([" if", " x", ":", "\n", "\t", "return", " None"], [0, 0, 0, -0.2, 0, 3.0, 0.5]),
]


def render(request) -> str:
    return "\n".join(f"=== {m.role}\n{m.content}" for m in request.messages) + "\n"


def test_explainer_prompt_is_pinned():
    request = explainer_request("some-model", WINDOWS, temperature=1.0)
    assert render(request) == (GOLDEN / "explainer.txt").read_text()
    assert load_template("explainer").version == "explainer-v1"


def test_simulator_prompt_is_pinned():
    request = simulator_request(
        "some-model", "return statements in Python.", WINDOWS[1][0], logprobs=True, temperature=0
    )
    assert render(request) == (GOLDEN / "simulator.txt").read_text()
    assert request.top_logprobs and request.logprobs
    assert load_template("simulator").version == "simulator-v1"


def test_records_scale_and_sparse_repeat():
    text = activation_records(WINDOWS)
    assert "return\t8" in text and "return\t10" in text  # 10 * 2.4 / 3.0 and the max
    assert "⏎\t0" in text and "⇥\t0" in text  # whitespace tokens are visible, tabs escaped
    # 4 of 16 values non-zero: under 20 %? no -> no repeat; make it sparse and check the repeat
    assert "zeros filtered out" not in text
    sparse = activation_records([(["a"] * 20, [0.0] * 19 + [1.0])])
    repeat = sparse.split("Same activations, but with all zeros filtered out:\n")[1]
    assert repeat == "<start>\na\t10\n<end>"
