"""Raw HTTP clients for the benchmarks: what a browser or an OpenAI client sends, with every byte counted.

``stream_v1`` reads ``/v1/chat/completions`` server-sent events; ``GradioQueue`` speaks Gradio's queue
protocol (``queue/join`` + the ``queue/data`` event stream, protocol sse_v3) exactly as the browser and
``gradio_client`` do, so the UI's own chat event and the ``/chat`` API endpoint can be timed and weighed.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field

import httpx


def _carries_text(part) -> bool:
    """Whether one output of a streamed update carries reply text: a whole chat value with an
    assistant message that has text, a non-empty string, or a non-empty diff of either."""
    if isinstance(part, list) and part and isinstance(part[0], dict):  # a whole Chatbot value
        return any(m.get("role") == "assistant" and m.get("content") for m in part)
    return bool(part)


@dataclass
class Trace:
    """One streamed reply as the client saw it."""

    started: float = field(default_factory=time.perf_counter)
    update_times: list[float] = field(default_factory=list)  # content-bearing messages
    update_bytes: list[int] = field(default_factory=list)
    total_bytes: int = 0  # everything received for this reply (and sent back by the server before it)
    ended: float = 0.0
    text: str = ""
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    marks: dict = field(default_factory=dict)  # protocol steps, seconds after ``started``

    def mark(self, name: str) -> None:
        """Note when a protocol step completed."""
        self.marks[name] = time.perf_counter() - self.started

    def add(self, nbytes: int) -> None:
        """Count a content update of ``nbytes`` arriving now."""
        self.update_times.append(time.perf_counter())
        self.update_bytes.append(nbytes)

    @property
    def ttft_s(self) -> float | None:
        """Seconds from the request to the first content."""
        return self.update_times[0] - self.started if self.update_times else None

    def tokens_per_s(self, tokens: int) -> float | None:
        """Tokens after the first over the time from the first to the last content update."""
        if len(self.update_times) < 2 or tokens < 2:
            return None
        return (tokens - 1) / (self.update_times[-1] - self.update_times[0])


def stream_v1(base: str, messages: list[dict], client: httpx.Client | None = None, **params) -> Trace:
    """Stream one reply from ``/v1/chat/completions``; usage is requested to check the token count."""
    body = {"messages": messages, "stream": True, "stream_options": {"include_usage": True}, **params}
    client = client or httpx.Client(timeout=None)
    trace = Trace()
    parts = []
    with client.stream("POST", f"{base}/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        buf = b""
        for raw in resp.iter_raw():
            trace.total_bytes += len(raw)
            buf += raw
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if not event.startswith(b"data: ") or event == b"data: [DONE]":
                    continue
                chunk = json.loads(event[6:])
                if "error" in chunk:
                    raise RuntimeError(chunk["error"])
                if chunk.get("usage"):
                    trace.completion_tokens = chunk["usage"]["completion_tokens"]
                    trace.prompt_tokens = chunk["usage"]["prompt_tokens"]
                content = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
                if content:
                    trace.add(len(event) + 2)
                    parts.append(content)
    trace.ended = time.perf_counter()
    trace.text = "".join(parts)
    return trace


class GradioQueue:
    """Gradio's browser protocol against a running app (no auth).

    One instance is one page (or one ``gradio_client.Client``): its events share one session
    hash, as the browser's do. Gradio builds a session's state (every component's config) on
    its first request, ~25 ms of the event loop with this UI; a page pays it on load, so a bench
    that made up a session per call would time that instead of the send.
    """

    def __init__(self, base: str):
        self.base = base
        self.session = uuid.uuid4().hex[:11]
        self.client = httpx.Client(timeout=None)
        config = self.client.get(f"{base}/config").raise_for_status().json()
        self.prefix = base + config.get("api_prefix", "/gradio_api")
        self.fn = {d.get("api_name"): d["id"] for d in config["dependencies"]}
        # Each event's input defaults, for inputs a bench does not set (e.g. the Tools tab's, which
        # came after these benches were written): sent as the page would send them untouched.
        values = {c["id"]: c.get("props", {}).get("value") for c in config["components"]}
        self.defaults = {d.get("api_name"): [values.get(i) for i in d["inputs"]] for d in config["dependencies"]}

    def predict(self, api_name: str, data: list, session: str) -> tuple[list, int]:
        """A ``queue=False`` event (e.g. the UI's submit): outputs and response bytes."""
        body = {"data": data, "fn_index": self.fn[api_name], "session_hash": session, "event_data": None}
        resp = self.client.post(f"{self.prefix}/run/predict", json=body).raise_for_status()
        return resp.json()["data"], len(resp.content)

    def stream(self, api_name: str, data: list, session: str, trace: Trace, content: int | None = None) -> list:
        """Run a queued (streaming) event; content updates go into ``trace``; returns the final outputs.

        ``content``: the output that carries the reply's text; an update that leaves it unchanged (the
        UI's first update, which only shows Stop) is not content. None: every update counts."""
        body = {"data": data, "fn_index": self.fn[api_name], "session_hash": session, "event_data": None}
        body["trigger_id"] = None
        self.client.post(f"{self.prefix}/queue/join", json=body).raise_for_status()
        trace.mark("queue/join answered")
        final: list = []
        with self.client.stream("GET", f"{self.prefix}/queue/data", params={"session_hash": session}) as resp:
            buf = b""
            for raw in resp.iter_raw():
                trace.total_bytes += len(raw)
                buf += raw
                done = False
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    if not event.startswith(b"data:"):
                        continue
                    msg = json.loads(event[5:])
                    kind = msg.get("msg")
                    if kind in ("estimation", "process_starts") and kind not in trace.marks:
                        trace.mark(kind)
                    if kind == "process_generating":
                        if content is None or _carries_text(msg["output"]["data"][content]):
                            trace.add(len(event) + 2)
                    elif kind == "process_completed":
                        if not msg.get("success", True):
                            raise RuntimeError(f"gradio event failed: {msg.get('output')}")
                        final = msg["output"]["data"]
                    elif kind == "close_stream":
                        done = True
                if done:
                    break
        trace.ended = time.perf_counter()
        return final

    def chat_api(self, message: str, system: str, settings: dict) -> Trace:
        """The named ``/chat`` endpoint (what ``gradio_client`` scripts call)."""
        trace = Trace()
        final = self.stream("chat", [message, [], system, settings], self.session, trace, content=0)
        trace.text = final[0] if final else ""
        return trace

    def ui_chat(self, message: str, system: str, settings: list, history: list | None = None) -> Trace:
        """The browser's send: ``submit`` (shows the message, returns the store), then ``respond`` streams.

        ``history``: earlier messages put into the conversation before this one (a long chat).
        """
        session = self.session
        trace = Trace()
        out, nbytes = self.predict("submit", [message, None], session)
        trace.total_bytes += nbytes
        trace.mark("submit answered")
        store = out[1]
        if history:
            conv = next(c for c in store["conversations"] if c["id"] == store["active"])
            conv["messages"] = [*history, *conv["messages"]]
        data = [store, system, False, "[]", *settings]
        final = self.stream("respond", data + self.defaults["respond"][len(data) :], session, trace, content=1)
        conv = next(c for c in final[0]["conversations"] if c["id"] == final[0]["active"])
        trace.text = conv["messages"][-1]["content"]
        stats = re.search(r"\*\*(\d+)\*\* tokens", str(final[2]))  # the reply's stats line
        trace.completion_tokens = int(stats.group(1)) if stats else None
        return trace
