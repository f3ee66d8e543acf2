"""LLM settings: endpoint, models, concurrency, rate limits, timeouts, prices. Never the API key.

The key stays in the environment (`OPENAI_API_KEY`) and is read by the client when it is built, so
no config object, config file, log line or catalogue row can carry it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from labeller.errors import UserError

OPENAI_BASE_URL = "https://api.openai.com/v1"


def default_base_url() -> str:
    return os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL


class LLMConfig(BaseModel):
    """Everything about the endpoint except the secret; safe to print, log and store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(default_factory=default_base_url)
    explainer_model: str | None = None
    simulator_model: str | None = None
    explainer_temperature: float = Field(default=1.0, ge=0.0)
    simulator_temperature: float = Field(default=0.0, ge=0.0)
    max_concurrency: int = Field(default=8, ge=1)
    timeout_s: float = Field(default=60.0, gt=0.0, description="per HTTP request")
    max_retries: int = Field(default=5, ge=0, description="extra attempts after the first")
    backoff_base_s: float = Field(default=1.0, ge=0.0)
    backoff_cap_s: float = Field(default=60.0, ge=0.0)
    max_requests_per_minute: float | None = Field(
        default=None, gt=0.0, description="attempts per minute, retries included"
    )
    max_tokens_per_minute: float | None = Field(
        default=None, gt=0.0, description="prompt + reply tokens per minute"
    )
    price_per_million_input: float | None = Field(default=None, ge=0.0, description="USD")
    price_per_million_output: float | None = Field(default=None, ge=0.0, description="USD")
    logprobs: bool | None = Field(
        default=None, description="None: try logprobs, fall back if the endpoint refuses them"
    )


def load_llm_config(path: Path | None = None, **overrides: Any) -> LLMConfig:
    """Config file `[llm]` table, then flags (`overrides`; None means "flag not given")."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with Path(path).open("rb") as handle:
                document = tomllib.load(handle)
        except FileNotFoundError:
            raise UserError(f"config file {path} does not exist") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UserError(f"cannot read config file {path}: {exc}") from None
        table = document.get("llm", {})
        if not isinstance(table, dict):
            raise UserError(f"{path}: [llm] must be a table")
        values.update(table)
    values.update({key: value for key, value in overrides.items() if value is not None})
    for key in values:
        if key in {"api_key", "openai_api_key"}:
            raise UserError(f"{key} is not read from config: set the OPENAI_API_KEY variable")
        if key not in LLMConfig.model_fields:
            known = ", ".join(LLMConfig.model_fields)
            raise UserError(f"unknown LLM setting {key!r}; known settings: {known}")
    try:
        return LLMConfig(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise UserError(f"bad LLM setting {where}: {error['msg']}") from None
