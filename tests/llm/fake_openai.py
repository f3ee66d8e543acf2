"""A real local OpenAI-compatible HTTP server for tests and benchmarks (no monkeypatching).

`FakeOpenAI` serves POST /v1/chat/completions and /v1/completions on 127.0.0.1 from a daemon
thread. Replies are
scripted: a `responder` maps each request's JSON to a `Reply` (content, logprobs, status, headers,
raw or truncated bodies, delay), one-shot failures queue up with `fail_next`, `fail_always` answers
every request with one failure (a refused key: `fail_always(status=401)`), and `latency_s` is
added to every call. It counts calls and keeps every request, so tests can assert what the client
really sent (and that a cached re-run sent nothing).

    with FakeOpenAI(latency_s=0.2) as server:
        config = LLMConfig(base_url=server.base_url)

/v1/completions answers as vLLM does: with `echo` it returns the prompt's tokens (a simple
word-ish tokenizer; "\t" and "unknown" are tokens of their own) in `choices[0].logprobs`
(`tokens`, `token_logprobs`, `top_logprobs` as {token: logprob} dicts, the first None,
`text_offset`), and at each "unknown" the `predictor`'s digit distribution for that line.
`prompt_logprobs=False` imitates llama.cpp's server, which returns none for the prompt; `bos`
prepends a begin-of-sequence token, as vLLM echoes one for Llama-style tokenizers.

Rate limits, as a provider enforces them: `tokens_per_minute` and `requests_per_minute` are token
buckets refilled continuously at limit / 60 per second holding `burst_s` seconds of it (60: a
full minute, as OpenAI's). A request is charged its usage (prompt + completion tokens, as the
reply reports them) when it arrives; one the buckets cannot pay is answered 429 with
`retry-after-ms`, `retry-after` and OpenAI's `x-ratelimit-*` headers, which every reply carries.
`accepted` keeps (arrival time, tokens) of every request let through, `limited` counts the 429s,
`arrivals` the arrival time (time.monotonic) of every request.

Run it alone for manual tries: `python tests/llm/fake_openai.py --port 8000 --latency 0.2`;
GET /_fake/stats returns the counters as JSON
(`--tpm 60000 --burst-s 2` for a rate-limited one).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal


@dataclass
class Reply:
    """What the server answers to one request.

    `logprobs`: per-token entries `{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}`
    (`bytes` is filled in); None makes them up from `content` when the request asks for them.
    `raw`: send these bytes as the body instead of a completion (malformed JSON).
    `truncate`: announce the full body but send only this many bytes, then drop the connection.
    """

    content: str = "fake reply"
    logprobs: list[dict[str, Any]] | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    truncate: int | None = None
    delay: float = 0.0
    finish_reason: str = "stop"
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


Responder = Callable[[dict[str, Any]], Reply]


def echo_responder(request: dict[str, Any]) -> Reply:
    """The default: a fixed reply naming the last message's length, so prompts stay distinct."""
    messages = request.get("messages") or [{}]
    return Reply(content=f"fake reply to {len(str(messages[-1].get('content', '')))} chars")


RECORD = re.compile(r"<start>\n(.*?)\n<end>", re.S)
NEURON_EXPLANATION = ' the "return" keyword in Python code'


def is_explainer_request(request: dict[str, Any]) -> bool:
    return "summarize in a single sentence" in request["messages"][0]["content"]


def prompt_records(request: dict[str, Any]) -> list[list[str]]:
    """Token columns of the final user message's records (before any zero-filtered repeat)."""
    text = request["messages"][-1]["content"].split("Same activations, but")[0]
    return [
        [line.rsplit("\t", 1)[0] for line in block.split("\n")] for block in RECORD.findall(text)
    ]


def split_bytes(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """An entry whose token is not ASCII as one-byte tokens, as OpenAI sends tokens that end
    inside a character: exact `bytes`, lossy `token` strings ("bytes:\\xe2")."""
    if entry["token"].isascii():
        return [entry]
    return [
        {"token": f"bytes:\\x{b:02x}", "bytes": [b], "logprob": 0.0, "top_logprobs": []}
        for b in entry["token"].encode()
    ]


def simulation_reply(tokens: list[str], drop_last: bool = False, multi_byte: bool = False) -> Reply:
    """A well-formed simulator reply (10 on tokens containing "return"), with logprobs that put
    0.8 on the written value and 0.2 on "5" at each value position. `multi_byte`: non-ASCII
    tokens (the visible markers) come split into byte tokens whose strings do not spell the
    reply; only their `bytes` do."""
    lines = [(t, 10 if "return" in t else 0) for t in tokens]
    if drop_last:
        lines = lines[:-1]
    content = "<start>\n" + "".join(f"{t}\t{v}\n" for t, v in lines) + "<end>"
    logprobs: list[dict[str, Any]] = [{"token": "<start>\n", "logprob": 0.0, "top_logprobs": []}]
    for token, value in lines:
        alternatives = [
            {"token": str(value), "logprob": math.log(0.8)},
            {"token": "5", "logprob": math.log(0.2)},
        ]
        logprobs += [
            {"token": f"{token}\t", "logprob": 0.0, "top_logprobs": []},
            {"token": str(value), "logprob": math.log(0.8), "top_logprobs": alternatives},
            {"token": "\n", "logprob": 0.0, "top_logprobs": []},
        ]
    logprobs.append({"token": "<end>", "logprob": 0.0, "top_logprobs": []})
    if multi_byte:
        logprobs = [piece for entry in logprobs for piece in split_bytes(entry)]
    return Reply(content=content, logprobs=logprobs)


def neuron_responder(request: dict[str, Any]) -> Reply:
    """Plays both roles of labeller's prompts: explainer and (well-aligned) simulator."""
    if is_explainer_request(request):
        # Distinct per prompt (so per neuron), like a real explainer's labels.
        digest = hashlib.sha256(request["messages"][-1]["content"].encode()).hexdigest()[:6]
        return Reply(content=f"{NEURON_EXPLANATION} (variant {digest}).")
    (tokens,) = prompt_records(request)
    return simulation_reply(tokens)


# Every character lands in exactly one token, so the tokens spell the prompt.
PROMPT_TOKEN = re.compile(
    r"<\|endofprompt\|>|\n+|\t|unknown|[ ]?[A-Za-z]+|[ ]?\d|[ ]?[^\sA-Za-z\d]|\s", re.S
)

Predictor = Callable[[str], dict[str, float]]


def tokenize_prompt(prompt: str) -> list[str]:
    tokens = PROMPT_TOKEN.findall(prompt)
    assert "".join(tokens) == prompt, "the fake tokenizer lost characters"
    return tokens


def return_predictor(line: str) -> dict[str, float]:
    """Labeller's neuron: 0.8 on "10" and 0.2 on "5" for a token containing "return", else 0.9
    on "0" and 0.1 on "1" (expected values 9.0 and 0.1); "unknown" and a spaced " 7" are among
    the alternatives, as a real model's would be, and count for nothing."""
    if "return" in line:
        weights = {"10": 0.8, "5": 0.2, "unknown": 0.05, " 7": 0.05}
    else:
        weights = {"0": 0.9, "1": 0.1, "unknown": 0.05, " 7": 0.05}
    return {token: math.log(p) for token, p in weights.items()}


def echo_logprobs(prompt: str, predictor: Predictor, top: int, bos: str | None) -> dict[str, Any]:
    """vLLM's legacy-format logprobs for an echoed prompt (`max_tokens=0`)."""
    tokens = ([bos] if bos else []) + tokenize_prompt(prompt)
    offsets, token_logprobs, tops = [], [], []
    offset = 0
    for i, token in enumerate(tokens):
        offsets.append(offset)
        offset += len(token)
        if i == 0:
            token_logprobs.append(None)
            tops.append(None)
            continue
        if token == "unknown" and tokens[i - 1] == "\t":
            text = "".join(tokens[:i])
            line = text[text.rfind("\n", 0, len(text) - 1) + 1 : -1]
            alternatives = predictor(line)
            alternatives.setdefault(token, -3.0)  # vLLM adds the prompt's own token
        else:
            alternatives = {token: -0.01}
        ranked = sorted(alternatives.items(), key=lambda kv: -kv[1])
        kept = dict(ranked[:top])
        kept.setdefault(token, alternatives[token])
        token_logprobs.append(alternatives[token])
        tops.append(kept)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s"


@dataclass
class _Bucket:
    rate: float
    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait(self, cost: float) -> float:
        need = min(cost, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def headers(self, kind: str) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{kind}": f"{self.rate * 60:.0f}",
            f"x-ratelimit-remaining-{kind}": str(max(0, math.floor(self.level))),
            f"x-ratelimit-reset-{kind}": format_duration((self.capacity - self.level) / self.rate),
        }


def approx_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def made_up_logprobs(content: str, top: int) -> list[dict[str, Any]]:
    """Word-ish tokens with near-certain logprobs and `top` alternatives each."""
    tokens = re.findall(r"\s*\S+", content) or ([content] if content else [])
    entries = []
    for token in tokens:
        alternatives = [{"token": token, "logprob": -0.01}]
        alternatives += [{"token": f"alt{i}", "logprob": -5.0 - i} for i in range(1, top)]
        entries.append({"token": token, "logprob": -0.01, "top_logprobs": alternatives[:top]})
    return entries


def with_bytes(entry: dict[str, Any]) -> dict[str, Any]:
    """Add OpenAI's `bytes` field to a logprob entry and its alternatives."""
    out = {"bytes": list(entry["token"].encode()), **entry}
    out["top_logprobs"] = [
        {"bytes": list(top["token"].encode()), **top} for top in entry.get("top_logprobs", [])
    ]
    return out


class FakeOpenAI:
    """A scripted OpenAI-compatible server on 127.0.0.1 (port 0 picks a free port).

    `logprobs`: True answers logprobs requests; False answers them 400 (endpoints without
    logprobs); "ignore" answers 200 without them (endpoints that drop unknown fields).
    `predictor`, `prompt_logprobs`, `bos`: how /v1/completions answers (see the module).
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        latency_s: float = 0.0,
        logprobs: bool | Literal["ignore"] = True,
        model: str = "fake-model",
        port: int = 0,
        predictor: Predictor | None = None,
        prompt_logprobs: bool = True,
        bos: str | None = None,
        tokens_per_minute: float | None = None,
        requests_per_minute: float | None = None,
        burst_s: float = 60.0,
    ) -> None:
        self.responder: Responder = responder or echo_responder
        self.predictor: Predictor = predictor or return_predictor
        self.prompt_logprobs = prompt_logprobs
        self.bos = bos
        self.latency_s = latency_s
        self.logprobs = logprobs
        self.model = model
        self._port = port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._scripted: deque[Reply] = deque()
        self._always: Reply | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.calls = 0
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.errors: list[str] = []
        now = time.monotonic()
        self._buckets = {
            kind: _Bucket(limit / 60, limit / 60 * burst_s, limit / 60 * burst_s, now)
            for kind, limit in (("requests", requests_per_minute), ("tokens", tokens_per_minute))
            if limit
        }
        self.accepted: list[tuple[float, int]] = []
        self.arrivals: list[float] = []
        self.limited = 0

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        self._stopping.clear()
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.02,), daemon=True, name="fake-openai"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- scripting ------------------------------------------------------------------------

    def fail_next(self, reply: Reply | None = None, **fields: Any) -> None:
        """Queue a one-shot reply, used before the responder (e.g. `fail_next(status=429)`)."""
        with self._lock:
            self._scripted.append(reply if reply is not None else Reply(**fields))

    def fail_always(self, reply: Reply | None = None, **fields: Any) -> None:
        """Answer every request with this reply (after any `fail_next` ones) until `reset`."""
        with self._lock:
            self._always = reply if reply is not None else Reply(**fields)

    def reset(self) -> None:
        with self._lock:
            self._scripted.clear()
            self._always = None
            self.calls = 0
            self.requests.clear()
            self.authorizations.clear()
            self.max_in_flight = 0
            self.errors.clear()
            self.accepted.clear()
            self.arrivals.clear()
            self.limited = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": self.calls,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "errors": list(self.errors),
                "limited": self.limited,
                "accepted_tokens": sum(tokens for _, tokens in self.accepted),
            }

    # --- serving (handler threads) ----------------------------------------------------------

    def _enter(self, request: dict[str, Any], authorization: str) -> Reply | None:
        with self._lock:
            self.arrivals.append(time.monotonic())
            self.calls += 1
            self.requests.append(request)
            self.authorizations.append(authorization)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self._scripted.popleft() if self._scripted else self._always

    def _charge(self, reply: Reply, body: bytes) -> tuple[Reply, bytes]:
        """Let a successful reply through the rate limits (charging its usage), or turn it into
        the 429 a provider sends; either way with the `x-ratelimit-*` headers."""
        if not self._buckets or reply.status >= 400 or reply.raw is not None:
            return reply, body
        usage = json.loads(body).get("usage") or {}
        costs = {"requests": 1, "tokens": int(usage.get("total_tokens") or 0)}
        with self._lock:
            now = time.monotonic()
            for bucket in self._buckets.values():
                bucket.refill(now)
            wait = max(b.wait(costs[kind]) for kind, b in self._buckets.items())
            if wait <= 0:
                for kind, bucket in self._buckets.items():
                    bucket.level -= costs[kind]
                self.accepted.append((now, costs["tokens"]))
            else:
                self.limited += 1
            headers: dict[str, str] = {}
            for kind, bucket in self._buckets.items():
                headers.update(bucket.headers(kind))
        if wait <= 0:
            return replace(reply, headers={**headers, **reply.headers}), body
        headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        headers["retry-after"] = str(math.ceil(wait))
        error = {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}
        return Reply(status=429, headers=headers), json.dumps({"error": error}).encode()

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _answer(
        self, request: dict[str, Any], scripted: Reply | None, path: str = "/v1/chat/completions"
    ) -> tuple[Reply, bytes]:
        """The reply to send and its full body."""
        if path == "/v1/completions":
            if scripted is None:
                return Reply(), json.dumps(self._text_completion(request)).encode()
            if scripted.raw is None and scripted.status < 400:
                return scripted, json.dumps(self._text_completion(request)).encode()
        wants_logprobs = bool(request.get("logprobs"))
        if scripted is None and wants_logprobs and self.logprobs is False:
            scripted = Reply(status=400, error="logprobs are not supported by this endpoint")
        if scripted is not None:
            reply = scripted
        else:
            try:
                reply = self.responder(request)
            except Exception as exc:  # a broken test responder must show, not hang the client
                with self._lock:
                    self.errors.append(repr(exc))
                reply = Reply(status=500, error=f"responder failed: {exc!r}")
        if reply.raw is not None:
            return reply, reply.raw
        if reply.status >= 400:
            error = {
                "message": reply.error or f"fake error {reply.status}",
                "type": "invalid_request_error" if reply.status < 500 else "server_error",
                "param": None,
                "code": None,
            }
            return reply, json.dumps({"error": error}).encode()
        return reply, json.dumps(self._completion(request, reply, wants_logprobs)).encode()

    def _text_completion(self, request: dict[str, Any]) -> dict[str, Any]:
        """A legacy completion: the prompt echoed with its logprobs (or, imitating llama.cpp,
        without them), and nothing generated (`max_tokens=0`)."""
        prompt = str(request.get("prompt", ""))
        echo = bool(request.get("echo"))
        top = int(request.get("logprobs") or 0)
        logprobs = None
        if echo and top and self.prompt_logprobs:
            logprobs = echo_logprobs(prompt, self.predictor, top, self.bos)
        generated = "" if request.get("max_tokens") == 0 else " fake"
        prompt_tokens = len(tokenize_prompt(prompt))
        return {
            "id": f"cmpl-fake-{self.calls}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": request.get("model") or self.model,
            "choices": [
                {
                    "index": 0,
                    "text": (prompt if echo and self.prompt_logprobs else "") + generated,
                    "logprobs": logprobs,
                    "finish_reason": "length",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(generated.split()),
                "total_tokens": prompt_tokens + len(generated.split()),
            },
        }

    def _completion(
        self, request: dict[str, Any], reply: Reply, wants_logprobs: bool
    ) -> dict[str, Any]:
        prompt = "".join(str(m.get("content", "")) for m in request.get("messages", []))
        prompt_tokens = reply.prompt_tokens or approx_tokens(prompt)
        completion_tokens = reply.completion_tokens or approx_tokens(reply.content)
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": reply.content, "refusal": None},
            "finish_reason": reply.finish_reason,
            "logprobs": None,
        }
        if wants_logprobs and self.logprobs is True:
            top = int(request.get("top_logprobs") or 0)
            entries = reply.logprobs
            if entries is None:
                entries = made_up_logprobs(reply.content, top)
            choice["logprobs"] = {"content": [with_bytes(e) for e in entries], "refusal": None}
        return {
            "id": f"chatcmpl-fake-{self.calls}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model") or self.model,
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256  # the default 5 drops connections when 32 clients open at once
    fake: FakeOpenAI

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that time out and hang up are part of the script; stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints do
    # Headers and body go out in separate writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms on Linux), which real servers (uvicorn, nginx) avoid with TCP_NODELAY.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr."""

    def do_GET(self) -> None:
        fake = self.server.fake
        if self.path.rstrip("/") == "/_fake/stats":
            self._send(200, json.dumps(fake.stats()).encode())
        elif self.path.rstrip("/") == "/v1/models":
            body = {"object": "list", "data": [{"id": fake.model, "object": "model"}]}
            self._send(200, json.dumps(body).encode())
        else:
            self._send(404, b'{"error": {"message": "not found"}}')

    def do_POST(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        path = self.path.rstrip("/")
        if path not in ("/v1/chat/completions", "/v1/completions"):
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        try:
            request = json.loads(data)
        except ValueError:
            self._send(400, b'{"error": {"message": "request body is not JSON"}}')
            return
        scripted = fake._enter(request, self.headers.get("Authorization", ""))
        try:
            reply, body = fake._charge(*fake._answer(request, scripted, path))
            fake._sleep(fake.latency_s + reply.delay)
            self._send(reply.status, body, reply.headers, reply.truncate)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client timed out and left
        finally:
            fake._leave()

    def _send(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        truncate: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if truncate is None:
            self.wfile.write(body)
            return
        self.wfile.write(body[:truncate])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every call")
    parser.add_argument("--no-logprobs", action="store_true", help="answer logprobs requests 400")
    parser.add_argument("--status", type=int, default=None, help="answer every request so (401)")
    parser.add_argument(
        "--responder", choices=["echo", "neuron"], default="echo", help="neuron: labeller prompts"
    )
    parser.add_argument("--tpm", type=float, default=None, help="tokens-per-minute limit")
    parser.add_argument("--rpm", type=float, default=None, help="requests-per-minute limit")
    parser.add_argument("--burst-s", type=float, default=60.0, help="seconds of the limit held")
    args = parser.parse_args()
    server = FakeOpenAI(
        neuron_responder if args.responder == "neuron" else None,
        latency_s=args.latency,
        logprobs=not args.no_logprobs,
        port=args.port,
        tokens_per_minute=args.tpm,
        requests_per_minute=args.rpm,
        burst_s=args.burst_s,
    ).start()
    if args.status is not None:
        server.fail_always(status=args.status)
    print(f"serving {server.base_url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
