"""Soak: many concurrent clients against the real app on loopback, every reply checked exactly.

    python bench/soak.py --clients 32 --minutes 5            # the long soak (docs/RELIABILITY.md)
    python bench/soak.py --clients 8 --seconds 20 --name soak_short --results-dir /tmp/x   # the CI one

Starts ``app.py`` on a tiny Qwen-1 checkpoint (real vocabulary, random weights) with logins
(``--auth``, one user per UI client), API keys (one per API client) and server-side history,
then runs the clients until the time is up:

* API clients (``/v1/chat/completions``): streamed, non-streamed, and cancelled (the client
  closes the stream after a few tokens), with varied system prompts and histories;
* Gradio API clients (``gradio_client``, ``/chat``): varied system prompts, some cancelled;
* UI clients (``gradio_client`` driving the UI's own events, as the browser does: ``/load``,
  ``/submit``, ``/respond``, ``/persist``): multi-turn chats with persona switches
  (``/pick_persona``), Stop mid-reply, new chats, and reconnects that reload the chats from the
  server and compare them with what the client holds.

Every reply is greedy, so each one is checked after the run against the reply the engine
gives (loaded in this process) for the prompt that client sent: a completed reply must be
equal, a cancelled one a prefix. A reply equal to the one expected for a *different* request
counts as mixed. At the end every UI user's chats are reloaded from the server, then again
after a restart of the app on the same data folder: a missing or changed one is lost. The
server's RSS is sampled every ``--sample-every`` seconds. Results: ``RESULTS/NAME.json`` and
``NAME.md``; the exit code is 1 if anything was wrong, mixed, lost or failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

from _common import RESULTS, machine

PROMPTS = [
    "Tell me about the sea.",
    "Write a haiku about autumn.",
    "What is 17 plus 25?",
    "用一句话介绍长城。",
    "List three colours.",
    "Explain recursion briefly.",
    "Give me a name for a cat.",
    "将这句话翻译成英文：今天天气很好。",
]
SYSTEMS = [
    "You are a helpful assistant.",
    "Be terse.",
    "你是一个乐于助人的助手。",
    "You are a pirate. Answer like one.",
]
HISTORIES = [[], [("hi", "hello!")], [("你好", "你好！有什么可以帮你？"), ("thanks", "any time")]]
PERSONAS = ["default-assistant", "translator", "code-reviewer", "anime-girl", "classical-poet", "compliment-writer"]
MAX_NEW = 16  # tokens of an ordinary reply
LONG_NEW = 400  # tokens asked for by a reply that is then cancelled
PREFIX_TOKENS = 48  # a cancelled reply is checked against the first this-many tokens first
SLIDERS = (0, 0.8, 0, 1.1)  # UI sliders: temperature 0 (greedy), top_p, top_k, repetition penalty
PASSWORD = "soak-pass"


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


class Recorder:
    """What the clients saw; thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.ttft: dict[str, list[float]] = defaultdict(list)
        self.counts: Counter = Counter()
        self.errors: list[str] = []
        self.checks: list[dict] = []

    def done(self, kind: str, started: float, first: float | None, check: dict | None) -> None:
        now = time.perf_counter()
        with self.lock:
            self.counts[kind] += 1
            self.latency[kind].append(now - started)
            if first is not None:
                self.ttft[kind].append(first - started)
            if check is not None:
                self.checks.append(check)

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    def error(self, kind: str, message: str) -> None:
        with self.lock:
            self.counts[f"{kind} error"] += 1
            if len(self.errors) < 200:
                self.errors.append(f"{kind}: {message}")


def _check(kind, query, history, system, reply, partial, max_new, examples=(), first_turn=False) -> dict:
    return {
        "kind": kind,
        "query": query,
        "history": [list(t) for t in history],
        "system": system,
        "examples": [list(t) for t in examples],
        "first_turn": bool(first_turn),
        "max_new": max_new,
        "reply": reply,
        "partial": partial,
    }


# --- clients -----------------------------------------------------------------------------


class ApiClient(threading.Thread):
    """``/v1/chat/completions`` over httpx: streamed, non-streamed and cancelled requests."""

    def __init__(self, n: int, url: str, key: str, rec: Recorder, stop: threading.Event, seed: int):
        super().__init__(daemon=True, name=f"api-{n}")
        self.url, self.key, self.rec, self.stop, self.rng = url, key, rec, stop, random.Random(seed)

    def run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {self.key}"}, timeout=300) as http:
            while not self.stop.is_set():
                action = self.rng.choices(["stream", "json", "cancel"], [5, 3, 2])[0]
                try:
                    self.one(http, action)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    self.rec.error(f"v1 {action}", f"{type(exc).__name__}: {exc}")
                    time.sleep(0.5)

    def one(self, http, action: str) -> None:
        system, query = self.rng.choice(SYSTEMS), self.rng.choice(PROMPTS)
        history = self.rng.choice(HISTORIES)
        messages = [{"role": "system", "content": system}]
        for user, assistant in history:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        messages.append({"role": "user", "content": query})
        max_new = LONG_NEW if action == "cancel" else MAX_NEW
        body = {"messages": messages, "temperature": 0, "max_tokens": max_new, "stream": action != "json"}
        started = time.perf_counter()
        if action == "json":
            resp = http.post("/v1/chat/completions", json=body)
            if resp.status_code == 429:
                self.rec.count("v1 429")
                time.sleep(min(2.0, float(resp.headers.get("retry-after", "1"))))
                return
            resp.raise_for_status()
            reply = resp.json()["choices"][0]["message"]["content"]
            self.rec.done("v1 json", started, None, _check("v1", query, history, system, reply, False, max_new))
            return
        stop_after = self.rng.randint(1, 6) if action == "cancel" else None
        text, first, chunks = "", None, 0
        with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            if resp.status_code == 429:
                self.rec.count("v1 429")
                resp.read()
                time.sleep(min(2.0, float(resp.headers.get("retry-after", "1"))))
                return
            if resp.status_code != 200:
                raise RuntimeError(f"HTTP {resp.status_code}: {resp.read()[:300]!r}")
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(f"error event: {event['error']}")
                for choice in event.get("choices") or ():
                    piece = choice.get("delta", {}).get("content")
                    if piece:
                        first = first or time.perf_counter()
                        text += piece
                        chunks += 1
                if stop_after is not None and chunks >= stop_after:
                    break  # leaving the block closes the connection mid-reply
        kind = "v1 cancel" if stop_after is not None else "v1 stream"
        check = _check("v1", query, history, system, text.strip(), stop_after is not None, max_new)
        self.rec.done(kind, started, first, check)


def _poll(job, on_output=None, timeout: float = 300.0):
    """Wait for a gradio_client job, looking at its outputs every 20 ms (Job's iterator spins at 1 ms)."""
    deadline = time.monotonic() + timeout
    seen = 0
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel()
            raise TimeoutError(f"no result in {timeout:.0f} s")
        outputs = job.outputs()
        if len(outputs) > seen and on_output is not None:
            on_output(outputs)
        seen = len(outputs)
        time.sleep(0.02)
    return job.outputs()


def _client(url: str, user: str):
    """A logged-in gradio_client session.

    Its default 5 s HTTP timeout is too short when many clients start at once on a small
    machine: each one fetches /gradio_api/info (~320 KB, ~0.3 s of server CPU); a browser
    never does, and waits longer.
    """
    from gradio_client import Client

    return Client(url + "/", auth=(user, PASSWORD), verbose=False, httpx_kwargs={"timeout": 60})


class GradioApiClient(threading.Thread):
    """The named ``/chat`` endpoint through gradio_client; some replies cancelled mid-way."""

    def __init__(self, n: int, url: str, rec: Recorder, stop: threading.Event, seed: int):
        super().__init__(daemon=True, name=f"gradio-api-{n}")
        self.url, self.user, self.rec, self.stop, self.rng = url, f"api{n}", rec, stop, random.Random(seed)

    def run(self) -> None:
        try:
            client = _client(self.url, self.user)
        except Exception as exc:  # noqa: BLE001
            self.rec.error("gradio /chat", f"login: {exc}")
            return
        while not self.stop.is_set():
            try:
                self.one(client)
            except Exception as exc:  # noqa: BLE001
                self.rec.error("gradio /chat", f"{type(exc).__name__}: {exc}")
                time.sleep(0.5)
        client.close()

    def one(self, client) -> None:
        from gradio_client.exceptions import AppError

        system, query, history = self.rng.choice(SYSTEMS), self.rng.choice(PROMPTS), self.rng.choice(HISTORIES)
        cancel = self.rng.random() < 0.2
        max_new = LONG_NEW if cancel else MAX_NEW
        started, first = time.perf_counter(), []
        job = client.submit(
            query, [list(t) for t in history], system, {"temperature": 0, "max_new_tokens": max_new}, api_name="/chat"
        )

        def seen(outputs):
            if not first and any(outputs):
                first.append(time.perf_counter())
            if cancel and len(outputs) >= 3:
                job.cancel()

        try:
            outputs = _poll(job, seen)
            try:
                result = job.result()
            except (concurrent.futures.CancelledError, KeyError, ValueError):
                # How gradio_client reports a job it cancelled: CancelledError, or, when the
                # server's "completed" message for the cancelled event (empty output) wins the
                # race, KeyError("Could not find 'data' key") or ValueError("Did not expect 2
                # tasks to be done"). Only an error when this client did not cancel.
                if not cancel:
                    raise
                result = None
        except AppError as exc:
            if "busy" in str(exc).lower():
                self.rec.count("gradio /chat busy")
                time.sleep(1.0)
                return
            raise
        if cancel and result is None:
            reply = (outputs[-1] if outputs else "").strip()
            kind = "gradio /chat cancel"
        else:  # finished (a cancel can come too late: then the whole reply is checked)
            reply, kind, cancel = result, "gradio /chat", False
        check = _check("chat", query, history, system, reply, cancel, max_new)
        self.rec.done(kind, started, first[0] if first else None, check)


def _active(store: dict) -> dict:
    return next(c for c in store["conversations"] if c["id"] == store["active"])


def _same_chats(a: dict, b: dict) -> list[str]:
    """Conversations of store ``a`` missing from or different in store ``b`` (ids)."""
    theirs = {c["id"]: c for c in (b or {}).get("conversations", [])}
    return [c["id"] for c in a["conversations"] if theirs.get(c["id"], {}).get("messages") != c["messages"]]


class UiClient(threading.Thread):
    """A logged-in user driving the UI's events as the browser does, with server-side history."""

    def __init__(self, n: int, url: str, rec: Recorder, stop: threading.Event, seed: int, reconnect_every: int = 3):
        super().__init__(daemon=True, name=f"ui-{n}")
        self.reconnect_every = reconnect_every
        self.url, self.user, self.rec, self.stop, self.rng = url, f"ui{n}", rec, stop, random.Random(seed)
        self.store: dict | None = None
        self.persona = ("You are a helpful assistant.", "[]", False)  # system, examples JSON, first-turn flag
        self.turns = 0

    def connect(self):
        """Log in (a new session) and load the chats from the server; they must be what this client holds."""
        client = _client(self.url, self.user)
        loaded = client.predict(None, api_name="/load")[0]
        if self.store is not None:
            lost = _same_chats(self.store, loaded)
            self.rec.count("ui reconnects")
            if lost:
                self.rec.count("ui chats lost on reconnect", len(lost))
                self.rec.error("ui", f"{self.user}: chats {lost} differ after reconnecting")
        self.store = loaded
        return client

    def run(self) -> None:
        try:
            client = self.connect()
        except Exception as exc:  # noqa: BLE001
            self.rec.error("ui", f"login: {exc}")
            return
        while not self.stop.is_set():
            try:
                self.turn(client)
                self.turns += 1
                if self.turns % 4 == 0:
                    self.store = client.predict(self.store, PERSONAS[0], api_name="/new_chat")[0]
                    client.predict(self.store, api_name="/persist")  # the browser saves on every store change
                if self.turns % self.reconnect_every == 0:
                    client.close()
                    client = self.connect()
            except Exception as exc:  # noqa: BLE001
                self.rec.error("ui", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
                time.sleep(0.5)
        client.close()

    def turn(self, client) -> None:
        if self.rng.random() < 0.25:
            persona = self.rng.choice(PERSONAS)
            out = client.predict(self.store, persona, api_name="/pick_persona")
            self.store, self.persona = out[0], (out[4], out[6], bool(out[7]))
            client.predict(self.store, api_name="/persist")
            self.rec.count("ui persona switches")
        query = self.rng.choice(PROMPTS)
        self.store = client.predict(query, self.store, api_name="/submit")[1]
        before = [dict(m) for m in _active(self.store)["messages"]]
        stop = self.rng.random() < 0.12
        max_new = LONG_NEW if stop else MAX_NEW
        system, examples, first_turn = self.persona
        started, first, stopped = time.perf_counter(), [], []
        job = client.submit(self.store, system, first_turn, examples, *SLIDERS, max_new, -1, 6144, api_name="/respond")

        def seen(outputs):
            chatbot = outputs[-1][1] if outputs[-1] else None
            if not first and chatbot and chatbot[-1].get("role") == "assistant":
                first.append(time.perf_counter())
            if stop and len(outputs) >= 3 and not stopped:
                stopped.append(True)
                client.predict(api_name="/stop")  # the Stop button: this session's reply, within one token

        _poll(job, seen)
        try:
            final = job.result()[0]
        except (concurrent.futures.CancelledError, KeyError, ValueError) as exc:
            # gradio_client's ways of reporting an event the server cancelled (see the /chat
            # client). Expected after this client's own Stop; anything else cancelled the reply.
            if not stopped:
                raise RuntimeError(
                    f"the reply was cancelled without Stop being pressed ({type(exc).__name__})"
                ) from exc
            final = None
        if not isinstance(final, dict):  # Stop cancelled the event: the UI then asks for the stopped chat
            final = client.predict(api_name="/after_stop")[0]
        self.store = final
        client.predict(self.store, api_name="/persist")
        msgs = _active(self.store)["messages"]
        last = msgs[-1]
        if last["role"] == "event":
            if "busy" in last["content"].lower():
                self.rec.count("ui busy")
            else:
                self.rec.error("ui", f"reply ended with {last['content'][:200]!r}")
            return
        pairs = [tuple(p) for p in json.loads(examples or "[]")]
        check = _check(
            "ui", None, pairs, system, last["content"], bool(last.get("stopped")), max_new, pairs, first_turn
        )
        check["messages"] = before
        kind = "ui stopped" if last.get("stopped") else "ui turn"
        self.rec.done(kind, started, first[0] if first else None, check)


# --- the server ---------------------------------------------------------------------------


class RssSampler(threading.Thread):
    """The server process's RSS every ``every`` seconds."""

    def __init__(self, pid: int, every: float, t0: float):
        super().__init__(daemon=True, name="rss")
        import psutil

        self.proc, self.every, self.t0 = psutil.Process(pid), every, t0
        self.samples: list[tuple[float, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.samples.append((time.monotonic() - self.t0, self.proc.memory_info().rss / 2**20))
            except Exception:  # noqa: BLE001 - the process is gone
                return
            self.halt.wait(self.every)


class HangWatch(threading.Thread):
    """Probes ``/healthz``; after ``limit`` seconds without an answer the server counts as hung.

    A hung server's threads are dumped (``py-spy dump --native``, where installed) into
    ``stacks_path`` so the cause can be read afterwards, and ``stop`` is set to end the run.
    """

    def __init__(self, url: str, pid: int, stop: threading.Event, t0: float, stacks_path: Path, limit: float = 60.0):
        super().__init__(daemon=True, name="hang-watch")
        self.url, self.pid, self.stop, self.t0, self.stacks_path, self.limit = url, pid, stop, t0, stacks_path, limit
        self.hung_at: float | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        import httpx

        last_ok = time.monotonic()
        while not self.halt.wait(5.0):
            try:
                httpx.get(self.url + "/healthz", timeout=10).raise_for_status()
                last_ok = time.monotonic()
            except Exception:  # noqa: BLE001 - no answer is what is watched for
                if time.monotonic() - last_ok >= self.limit:
                    self.hung_at = round(last_ok - self.t0, 1)
                    print(f"soak: the server stopped answering /healthz at {self.hung_at} s", flush=True)
                    self._dump()
                    self.stop.set()
                    return

    def _dump(self) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        try:
            out = subprocess.run(
                [spy, "dump", "--native", "--pid", str(self.pid)], capture_output=True, text=True, timeout=120
            )
            text = out.stdout + out.stderr
        except (OSError, subprocess.SubprocessError) as exc:
            text = f"could not dump the server's threads: {exc}"
        self.stacks_path.parent.mkdir(parents=True, exist_ok=True)
        self.stacks_path.write_text(text)


def rss_verdict(samples: list[tuple[float, float]], warmup_s: float) -> dict:
    """Growth after warm-up: the median of the last fifth against the median of the first fifth after it."""
    after = [(t, r) for t, r in samples if t >= warmup_s]
    if len(after) < 5:
        return {"verdict": "too few samples after warm-up", "samples_after_warmup": len(after)}
    k = max(1, len(after) // 5)
    early = statistics.median(r for _, r in after[:k])
    late = statistics.median(r for _, r in after[-k:])
    ts, rs = [t for t, _ in after], [r for _, r in after]
    mean_t, mean_r = statistics.fmean(ts), statistics.fmean(rs)
    var = sum((t - mean_t) ** 2 for t in ts)
    slope = sum((t - mean_t) * (r - mean_r) for t, r in after) / var * 60 if var else 0.0
    growth = late - early
    flat = growth <= max(0.05 * early, 25.0)
    return {
        "warmup_s": warmup_s,
        "rss_after_warmup_mb": round(early, 1),
        "rss_at_end_mb": round(late, 1),
        "growth_mb": round(growth, 1),
        "slope_mb_per_min": round(slope, 2),
        "max_mb": round(max(rs), 1),
        "verdict": "flat" if flat else "growing",
        "rule": "flat if the median RSS of the last fifth of the post-warm-up samples exceeds that of the first "
        "fifth by at most max(5 %, 25 MB)",
    }


def start_app(ckpt: Path, data: Path, users: list[str], keys: list[str], args):
    """``app.py`` with logins, API keys and server-side history; its output is drained (last lines kept)."""
    from server_process import AppProcess

    auth_file = data.parent / "users.txt"
    auth_file.write_text("".join(f"{u}:{PASSWORD}\n" for u in users))
    app = AppProcess(
        ["--model", str(ckpt), "--device", "cpu", "--data-dir", str(data), "--server-history",
         "--concurrency", str(args.concurrency), "--max-queue", str(args.max_queue),
         "--auth", f"@{auth_file}", "--api-key", ",".join(keys)],
        env={"GRADIO_ANALYTICS_ENABLED": "False"},
    )  # fmt: skip
    return app


def _log_tail(app, lines: int = 40) -> list[str]:
    """The app's last log lines that are not access-log lines (AppProcess writes its output to a file)."""
    try:
        text = app.output()
    except (OSError, ValueError):
        return []
    return [line for line in text.splitlines() if "qwen_chat.http" not in line][-lines:]


def wait_idle(url: str, timeout: float = 300.0) -> tuple[dict, float]:
    """The scheduler once nothing runs or waits (or at ``timeout``), and the seconds that took."""
    import httpx

    started = time.monotonic()
    while True:
        stats = httpx.get(url + "/readyz", timeout=30).json()["scheduler"]
        waited = time.monotonic() - started
        if (stats["active"], stats["waiting"]) == (0, 0) or waited > timeout:
            return stats, round(waited, 1)
        time.sleep(0.2)


def reload_all(url: str, uis: list[UiClient]) -> tuple[int, list[str]]:
    """Every UI user's chats as the server has them now, compared with what the client holds."""
    lost, problems = 0, []
    for ui in uis:
        if ui.store is None:
            continue
        try:
            client = _client(url, ui.user)
            loaded = client.predict(None, api_name="/load")[0]
            client.close()
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{ui.user}: cannot reload ({exc})")
            lost += len(ui.store["conversations"])
            continue
        missing = _same_chats(ui.store, loaded)
        if missing:
            problems.append(f"{ui.user}: chats {missing} missing or different")
        lost += len(missing)
    return lost, problems


# --- checking the replies ------------------------------------------------------------------


def verify(engine, checks: list[dict]) -> dict:
    """Compare every recorded reply with the engine's greedy reply to the same prompt."""
    from ui.conversations import to_model_history

    cache: dict = {}

    def expected(query, history, system, first_turn, max_new) -> str:
        key = (query, tuple(map(tuple, history)), system, first_turn, max_new)
        if key not in cache:
            stream = engine.stream_chat(
                query, history, system, system_in_first_turn=first_turn, do_sample=False, max_new_tokens=max_new
            )
            cache[key] = stream.text().strip()
        return cache[key]

    wrong, mixed, examples = 0, 0, []
    for c in checks:
        history = [tuple(t) for t in c["history"]]
        query = c["query"]
        if c["kind"] == "ui":  # as ChatService builds it: trailing user messages joined, examples first
            msgs = c["messages"]
            at = len(msgs) - 1
            pending = [msgs[at]["content"]]
            while at > 0 and msgs[at - 1]["role"] == "user":
                at -= 1
                pending.insert(0, msgs[at]["content"])
            query = "\n\n".join(pending)
            history = [tuple(t) for t in c["examples"]] + to_model_history(msgs[:at])
        args = (query, history, c["system"], c["first_turn"])
        key = (query, tuple(history), c["system"], c["first_turn"])
        if c["partial"]:
            want = expected(*args, PREFIX_TOKENS)
            if not want.startswith(c["reply"]) and len(c["reply"]) >= len(want):
                want = expected(*args, c["max_new"])
            ok = want.startswith(c["reply"])
        else:
            want = expected(*args, c["max_new"])
            ok = c["reply"] == want
        if not ok:
            wrong += 1
            others = {v for k, v in cache.items() if k[:4] != key}
            if c["reply"] and any(v == c["reply"] or (c["partial"] and v.startswith(c["reply"])) for v in others):
                mixed += 1
            if len(examples) < 20:
                examples.append({"kind": c["kind"], "query": query, "got": c["reply"][:200], "want": want[:200]})
    return {
        "checked": len(checks),
        "partial": sum(c["partial"] for c in checks),
        "wrong": wrong,
        "mixed": mixed,
        "distinct_prompts": len(cache),
        "examples": examples,
    }


# --- the run -----------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--concurrency", type=int, default=4, help="the app's --concurrency")
    ap.add_argument("--max-queue", type=int, default=16, help="the app's --max-queue (small: the 429 path is used)")
    ap.add_argument("--sample-every", type=float, default=2.0, help="seconds between RSS samples")
    ap.add_argument("--warmup", type=float, default=None, help="seconds of warm-up (default: a third, at most 120)")
    ap.add_argument("--reconnect-every", type=int, default=3, help="UI turns between reconnects (reload from server)")
    ap.add_argument("--no-restart", action="store_true", help="skip reloading the chats after restarting the app")
    ap.add_argument("--name", default=None, help="result file name (default soak_<clients>c_<seconds>s)")
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    duration = args.seconds if args.seconds is not None else 60 * (args.minutes if args.minutes is not None else 5)
    warmup = args.warmup if args.warmup is not None else min(120.0, duration / 3)
    name = args.name or f"soak_{args.clients}c_{round(duration)}s"
    command = "python bench/soak.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])

    from qwen1_checkpoint import Shape, write_checkpoint

    from qwen_core import load_engine

    n_ui = max(1, args.clients // 4)
    n_gradio = max(1, args.clients // 4)
    n_api = max(1, args.clients - n_ui - n_gradio)
    users = [f"ui{i}" for i in range(n_ui)] + [f"api{i}" for i in range(n_gradio)]
    keys = [f"soak-key-{i}" for i in range(n_api)]
    phases: dict[str, float] = {}
    mark = [time.monotonic()]

    def phase(label: str) -> None:
        now = time.monotonic()
        phases[label] = round(now - mark[0], 1)
        mark[0] = now
        print(f"  [{label}: {phases[label]} s]", flush=True)

    with tempfile.TemporaryDirectory(prefix="qwen-soak-") as tmp:
        ckpt = write_checkpoint(Path(tmp) / "tiny", Shape(), "float32", seed=0)
        data = Path(tmp) / "data"
        app = start_app(ckpt, data, users, keys, args)
        phase("start app")
        rec, stop = Recorder(), threading.Event()
        load_start = round(os.getloadavg()[0], 2)
        t0 = time.monotonic()
        rss = RssSampler(app.proc.pid, args.sample_every, t0)
        rss.start()
        watch = HangWatch(app.url, app.proc.pid, stop, t0, args.results_dir / f"{name}_hang_stacks.txt")
        watch.start()
        uis = [UiClient(i, app.url, rec, stop, 1000 + i, args.reconnect_every) for i in range(n_ui)]
        clients = [
            *uis,
            *(GradioApiClient(i, app.url, rec, stop, 2000 + i) for i in range(n_gradio)),
            *(ApiClient(i, app.url, keys[i], rec, stop, 3000 + i) for i in range(n_api)),
        ]
        print(f"soak: {len(uis)} UI, {n_gradio} Gradio API, {n_api} /v1 clients for {duration:.0f} s", flush=True)
        for c in clients:
            c.start()
        while time.monotonic() - t0 < duration and not stop.is_set():
            stop.wait(min(10.0, duration))
            print(f"  {time.monotonic() - t0:5.0f} s  {dict(rec.counts)}", flush=True)
        stop.set()
        watch.halt.set()
        if watch.hung_at is not None:
            # Nothing more can be learnt from a hung server: report what was seen up to here.
            app.proc.kill()
        deadline = time.monotonic() + 120  # each request has its own bound; this one catches a hang
        for c in clients:
            c.join(max(0.1, deadline - time.monotonic()))
        hung = [c.name for c in clients if c.is_alive()]
        wall = time.monotonic() - t0
        load_end = round(os.getloadavg()[0], 2)
        phase("load")
        rss.halt.set()
        if watch.hung_at is None:
            scheduler_after, idle_after_s = wait_idle(app.url)
            lost, lost_problems = reload_all(app.url, uis)
        else:
            scheduler_after, idle_after_s = {"active": None, "waiting": None, "hung": True}, None
            lost, lost_problems = 0, [f"the server hung at {watch.hung_at} s (threads: {watch.stacks_path.name})"]
        app.stop()
        phase("reload chats, stop app")
        lost_restart, restart_problems = 0, []
        if not args.no_restart:
            again = start_app(ckpt, data, users, keys, args)
            try:
                lost_restart, restart_problems = reload_all(again.url, uis)
            finally:
                again.stop()
            phase("restart, reload chats")
        print(f"verifying {len(rec.checks)} replies against the engine ...", flush=True)
        engine = load_engine(str(ckpt), device="cpu")
        checked = verify(engine, rec.checks)
        phase("verify replies")

    counts = dict(sorted(rec.counts.items()))
    kinds = sorted(rec.latency)
    latency = {
        k: {
            "n": len(rec.latency[k]),
            "p50_s": percentile(rec.latency[k], 50),
            "p95_s": percentile(rec.latency[k], 95),
            "p99_s": percentile(rec.latency[k], 99),
            "ttft_p50_s": percentile(rec.ttft[k], 50),
            "ttft_p99_s": percentile(rec.ttft[k], 99),
        }
        for k in kinds
    }
    everything = [x for k in kinds for x in rec.latency[k]]
    all_ttft = [x for k in kinds for x in rec.ttft[k]]
    latency["all"] = {
        "n": len(everything),
        "p50_s": percentile(everything, 50),
        "p95_s": percentile(everything, 95),
        "p99_s": percentile(everything, 99),
        "ttft_p50_s": percentile(all_ttft, 50),
        "ttft_p99_s": percentile(all_ttft, 99),
    }
    errors = sum(v for k, v in rec.counts.items() if k.endswith(" error"))
    memory = rss_verdict(rss.samples, warmup)
    result = {
        "command": command,
        "machine": machine(),
        "clients": {"total": len(clients), "ui": n_ui, "gradio_api": n_gradio, "v1": n_api},
        "app": {"concurrency": args.concurrency, "max_queue": args.max_queue, "model": "tiny Qwen-1 (fp32, CPU)"},
        "duration_s": round(wall, 1),
        "load_average_1m": {"start": load_start, "end": load_end},
        "phases_s": phases,
        "counts": counts,
        "requests_completed": len(everything),
        "busy_429": counts.get("v1 429", 0) + counts.get("gradio /chat busy", 0) + counts.get("ui busy", 0),
        "errors": errors,
        "error_samples": rec.errors[:20],
        "hung_clients": hung,
        "server_hung_at_s": watch.hung_at,
        "scheduler_after": scheduler_after,
        "scheduler_idle_after_s": idle_after_s,
        "app_log_tail": _log_tail(app),
        "replies": checked,
        "conversations": {
            "ui_users": len(uis),
            "chats_held": sum(len(u.store["conversations"]) for u in uis if u.store),
            "lost_on_reconnect": counts.get("ui chats lost on reconnect", 0),
            "lost_at_end": lost,
            "lost_after_restart": lost_restart if not args.no_restart else None,
            "problems": (lost_problems + restart_problems)[:20],
        },
        "latency": {
            k: {m: (round(v, 3) if isinstance(v, float) else v) for m, v in d.items()} for k, d in latency.items()
        },
        "rss": memory,
        "rss_samples": [(round(t, 1), round(r, 1)) for t, r in rss.samples],
    }
    failed = bool(
        checked["wrong"]
        or errors
        or hung
        or watch.hung_at is not None
        or lost
        or lost_restart
        or result["conversations"]["lost_on_reconnect"]
        or scheduler_after["active"]
        or scheduler_after["waiting"]
    )
    result["passed"] = not failed
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{name}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    (args.results_dir / f"{name}.md").write_text(markdown(name, result))
    print((args.results_dir / f"{name}.md").read_text())
    return 1 if failed else 0


def _fmt(v) -> str:
    return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def markdown(name: str, r: dict) -> str:
    """The human-readable report."""
    m, c, rep, conv, mem = r["machine"], r["counts"], r["replies"], r["conversations"], r["rss"]
    lines = [
        f"# {name}",
        "",
        f"`{r['command']}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in m.items()),
        "",
        f"Load average (1 min) at start / end: {r['load_average_1m']['start']} / {r['load_average_1m']['end']} "
        "(the app, the clients and anything else on the machine share its cores).",
        "",
        f"**{'PASSED' if r['passed'] else 'FAILED'}** — {r['clients']['total']} clients "
        f"({r['clients']['ui']} UI users, {r['clients']['gradio_api']} Gradio API, {r['clients']['v1']} /v1) for "
        f"{r['duration_s']} s against `app.py --concurrency {r['app']['concurrency']} --max-queue "
        f"{r['app']['max_queue']}` on the {r['app']['model']} model.",
        "",
        "| | |",
        "|---|---|",
        f"| requests completed | {r['requests_completed']} |",
        f"| replies checked exactly (of them cancelled/stopped, checked as prefixes) | {rep['checked']} ({rep['partial']}) |",
        f"| wrong replies / mixed replies | {rep['wrong']} / {rep['mixed']} |",
        f"| errors / hung clients | {r['errors']} / {len(r['hung_clients'])} |",
        f"| server hung (stopped answering /healthz) at | {_fmt(r.get('server_hung_at_s'))} s |",
        f"| busy answers (429 / busy), retried | {r['busy_429']} |",
        f"| persona switches / UI reconnects | {c.get('ui persona switches', 0)} / {c.get('ui reconnects', 0)} |",
        f"| UI chats held at the end | {conv['chats_held']} |",
        f"| chats lost: on reconnect / at end / after restart | {conv['lost_on_reconnect']} / {conv['lost_at_end']} / "
        f"{_fmt(conv['lost_after_restart'])} |",
        f"| scheduler after the run (free after) | {r['scheduler_after']} ({r['scheduler_idle_after_s']} s) |",
        f"| server RSS after warm-up → end (max) | {_fmt(mem.get('rss_after_warmup_mb'))} → "
        f"{_fmt(mem.get('rss_at_end_mb'))} MB ({_fmt(mem.get('max_mb'))}), slope {_fmt(mem.get('slope_mb_per_min'))} "
        f"MB/min: **{mem['verdict']}** |",
        "",
        "| kind | n | p50 s | p95 s | p99 s | TTFT p50 s | TTFT p99 s |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, d in r["latency"].items():
        lines.append(
            f"| {kind} | {d['n']} | {_fmt(d['p50_s'])} | {_fmt(d['p95_s'])} | {_fmt(d['p99_s'])} | "
            f"{_fmt(d['ttft_p50_s'])} | {_fmt(d['ttft_p99_s'])} |"
        )
    samples = r["rss_samples"]
    step = max(1, len(samples) // 24)
    lines += ["", "RSS over time (s → MB): " + ", ".join(f"{t:.0f} → {m:.0f}" for t, m in samples[::step]), ""]
    if r["error_samples"] or conv["problems"] or rep["examples"]:
        lines += ["Problems:", ""]
        lines += [f"- {e}" for e in r["error_samples"] + conv["problems"]]
        lines += [f"- wrong {e['kind']} reply to {e['query']!r}: {e['got']!r} ≠ {e['want']!r}" for e in rep["examples"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
