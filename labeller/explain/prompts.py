"""Prompt templates from `prompts/`: loaded from files, versioned, rendered into chat messages.

Token records use the Bills et al. format: `token<TAB>value` lines between `<start>` and `<end>`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import labeller
from labeller.errors import UserError
from labeller.explain.scoring import normalise_for_prompt
from labeller.records import ChatMessage
from labeller.render import visible_token

SPARSE_FRACTION = 0.2


def prompts_dir() -> Path:
    """`prompts/` beside the package in a checkout, or the copy a wheel carries inside it."""
    package = Path(labeller.__file__).parent
    for candidate in (package.parent / "prompts", package / "_data" / "prompts"):
        if candidate.is_dir():
            return candidate
    raise UserError("labeller's prompts/ folder is missing; reinstall labeller")


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    system: str
    user: str
    few_shot: tuple[dict[str, str], ...]


@cache
def load_template(name: str) -> Template:
    path = prompts_dir() / f"{name}.toml"
    data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    return Template(
        name=name,
        version=data["version"],
        system=data["system"],
        user=data["user"],
        few_shot=tuple(data.get("few_shot", [])),
    )


def record_block(tokens: Sequence[str], values: Sequence[int | str]) -> str:
    lines = [f"{visible_token(t)}\t{v}" for t, v in zip(tokens, values, strict=True)]
    return "\n".join(["<start>", *lines, "<end>"])


def activation_records(windows: Sequence[tuple[Sequence[str], Sequence[float]]]) -> str:
    """Records scaled 0-10 by the max over the records shown; sparse neurons get a second copy
    with the zeros filtered out, so the few firing tokens are not lost in the noise."""
    max_activation = max((max(acts) for _, acts in windows), default=0.0)
    scaled = [normalise_for_prompt(acts, max_activation) for _, acts in windows]
    blocks = [
        record_block(tokens, values) for (tokens, _), values in zip(windows, scaled, strict=True)
    ]
    total = sum(len(values) for values in scaled)
    nonzero = sum(1 for values in scaled for v in values if v)
    if total and nonzero / total < SPARSE_FRACTION:
        blocks.append("Same activations, but with all zeros filtered out:")
        for (tokens, _), values in zip(windows, scaled, strict=True):
            kept = [(t, v) for t, v in zip(tokens, values, strict=True) if v]
            blocks.append(record_block([t for t, _ in kept], [v for _, v in kept]))
    return "\n".join(blocks)


def explainer_messages(template: Template, records: str) -> list[ChatMessage]:
    messages = [ChatMessage(role="system", content=template.system)]
    for number, shot in enumerate(template.few_shot, start=1):
        messages.append(
            ChatMessage(
                role="user", content=template.user.format(neuron=number, records=shot["records"])
            )
        )
        messages.append(ChatMessage(role="assistant", content=shot["explanation"]))
    neuron = len(template.few_shot) + 1
    messages.append(
        ChatMessage(role="user", content=template.user.format(neuron=neuron, records=records))
    )
    return messages


def simulator_messages(
    template: Template, explanation: str, tokens: Sequence[str]
) -> list[ChatMessage]:
    messages = [ChatMessage(role="system", content=template.system)]
    for number, shot in enumerate(template.few_shot, start=1):
        user = template.user.format(
            neuron=number, explanation=shot["explanation"], records=shot["records"]
        )
        messages.append(ChatMessage(role="user", content=user))
        messages.append(ChatMessage(role="assistant", content=shot["reply"]))
    neuron = len(template.few_shot) + 1
    records = record_block(tokens, ["unknown"] * len(tokens))
    messages.append(
        ChatMessage(
            role="user",
            content=template.user.format(neuron=neuron, explanation=explanation, records=records),
        )
    )
    return messages
