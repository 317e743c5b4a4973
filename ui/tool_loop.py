"""Replies with tools: Qwen's ReAct loop run server-side for the chat (no Gradio, no torch).

Each step builds the exact tool prompt ``/v1`` builds (:func:`qwen_core.tools.plan_tool_messages` on the
conversation as OpenAI messages, :func:`qwen_core.tools.engine_prompt_ids`), streams the model's reply
through the engine contract (``stream_prompt``), cuts it at ``Observation:`` and reads it with
:class:`qwen_core.tool_reply.ToolReplyParser`. A call of a built-in tool is run (:mod:`ui.builtin_tools`)
and its result appended as the observation, and the model continues; a ``Final Answer`` (or any reply
without an action) ends the reply. At most ``max_steps`` calls; the step after them has the tools left
out of the prompt (``tool_choice: none``), so the model has to answer.

Calls of the user's own (pasted) tools are never run or made up: the step is shown with the call and
its arguments and waits; the user's next message is that call's result (see
:meth:`ui.service.ChatService.add_user_message`), and the model then continues.

The conversation keeps the steps as data, in the one message format used end to end (OpenAI's, as
``qwen_core`` takes it): an assistant message with ``tool_calls`` (its ``content`` the thought), a
``tool`` message with ``tool_call_id`` and the observation, then the assistant's final answer.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from qwen_core.stops import StopMatcher
from qwen_core.text import coalesced
from qwen_core.tool_reply import ToolReplyParser
from qwen_core.tools import engine_prompt_ids, plan_tool_messages

from .builtin_tools import BUILTIN_SCHEMAS, run_builtin
from .conversations import message
from .server_text import localize

MAX_STEPS = 5
CUT_CALL = "The reply reached Max new tokens in the middle of a tool call, so the call was not made: raise Max new tokens and Regenerate."
MAX_CUSTOM_TOOLS = 16
MAX_SCHEMA_CHARS = 50_000
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names
_FUNCTION_KEYS = {"name", "description", "parameters", "strict"}


class ToolSchemaError(ValueError):
    """Pasted function schemas that can't be used; the message names the place and says why."""


def parse_custom_tools(text: str | None) -> tuple[dict, ...]:
    """The user's pasted OpenAI function schemas, checked: a JSON list of ``{"type": "function",
    "function": {"name", "description", "parameters"}}`` (a single one, or bare function objects, are
    taken too). Returns them in the ``tools`` shape; raises :class:`ToolSchemaError`."""
    if not text or not text.strip():
        return ()
    if len(text) > MAX_SCHEMA_CHARS:
        raise ToolSchemaError(f"the schemas are longer than {MAX_SCHEMA_CHARS:,} characters")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolSchemaError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    items = data if isinstance(data, list) else [data]
    if len(items) > MAX_CUSTOM_TOOLS:
        raise ToolSchemaError(f"at most {MAX_CUSTOM_TOOLS} tools can be given ({len(items)} were)")
    out, seen = [], set()
    for i, item in enumerate(items):
        where = f"tools[{i}]"
        if not isinstance(item, dict):
            raise ToolSchemaError(f'{where}: expected an object like {{"type": "function", "function": {{...}}}}')
        if "function" not in item and "name" in item:  # a bare function object (the legacy `functions` shape)
            item = {"type": "function", "function": item}
        if item.get("type", "function") != "function":
            raise ToolSchemaError(f"{where}.type: only 'function' tools are supported, not {item.get('type')!r}")
        extra = set(item) - {"type", "function"}
        if extra:
            raise ToolSchemaError(f"{where}: unknown key {sorted(extra)[0]!r} (expected type and function)")
        fn = _check_function(item.get("function"), f"{where}.function")
        if fn["name"] in BUILTIN_SCHEMAS:
            raise ToolSchemaError(f"{where}.function.name: {fn['name']!r} is a built-in tool; enable it above instead")
        if fn["name"] in seen:
            raise ToolSchemaError(f"{where}.function.name: {fn['name']!r} is given twice")
        seen.add(fn["name"])
        out.append({"type": "function", "function": fn})
    return tuple(out)


def _check_function(fn: object, where: str) -> dict:
    if not isinstance(fn, dict):
        raise ToolSchemaError(f"{where}: expected an object with name, description and parameters")
    extra = set(fn) - _FUNCTION_KEYS
    if extra:
        raise ToolSchemaError(
            f"{where}: unknown key {sorted(extra)[0]!r} (allowed: {', '.join(sorted(_FUNCTION_KEYS))})"
        )
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ToolSchemaError(f"{where}.name: needs 1-64 letters, digits, _ or - (got {name!r})")
    if not isinstance(fn.get("description", ""), str):
        raise ToolSchemaError(f"{where}.description: must be text")
    params = fn.get("parameters")
    if params is not None:
        if not isinstance(params, dict) or params.get("type") != "object":
            raise ToolSchemaError(f'{where}.parameters: must be a JSON Schema object ({{"type": "object", ...}})')
        props = params.get("properties", {})
        if not isinstance(props, dict) or not all(isinstance(v, dict) for v in props.values()):
            raise ToolSchemaError(f"{where}.parameters.properties: must map each parameter name to its schema")
        required = params.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) and r in props for r in required):
            raise ToolSchemaError(f"{where}.parameters.required: must list names that are in properties")
    return dict(fn)


@dataclass(frozen=True)
class ToolSet:
    """The tools a reply may use: enabled built-ins, the user's checked schemas, and the tool choice of
    the step that answers the user's message ("auto", "required" or a tool name; later steps, and a reply
    continuing after a result the user gave, are "auto")."""

    builtin: tuple[str, ...] = ()
    custom: tuple[dict, ...] = ()
    choice: str = "auto"
    max_steps: int = MAX_STEPS

    @property
    def schemas(self) -> list[dict]:
        """Every enabled tool as an OpenAI ``tools`` entry, built-ins first."""
        return [BUILTIN_SCHEMAS[n] for n in self.builtin if n in BUILTIN_SCHEMAS] + list(self.custom)

    @property
    def names(self) -> tuple[str, ...]:
        """The enabled tools' names."""
        return tuple(t["function"]["name"] for t in self.schemas)

    @property
    def active(self) -> bool:
        """Whether any tool is enabled."""
        return bool(self.schemas)

    def first_choice(self) -> str:
        """The tool choice of the first step; one that no longer applies falls back to "auto"."""
        if not self.active:
            return "none"
        if self.choice == "required" or self.choice in self.names:
            return self.choice
        return "auto"


def _openai_choice(choice: str) -> str | dict:
    """A tool name as OpenAI's named ``tool_choice``."""
    return choice if choice in ("auto", "none", "required") else {"type": "function", "function": {"name": choice}}


def pending_call(messages: list[dict]) -> dict | None:
    """The last message's tool call when it still waits for its result (a call of a user's tool)."""
    if messages and messages[-1].get("role") == "assistant" and messages[-1].get("tool_calls"):
        return messages[-1]["tool_calls"][0]
    return None


def openai_messages(system: str, examples: list[tuple[str, str]], messages: list[dict]) -> list[dict]:
    """The conversation as OpenAI chat messages: events left out, a greeting before any user turn too."""
    out: list[dict] = [{"role": "system", "content": system}]
    for user, assistant in examples:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    seen_user = bool(examples)
    for msg in messages:
        role = msg.get("role")
        if role == "user":
            seen_user = True
            out.append({"role": "user", "content": msg["content"]})
        elif role == "assistant" and seen_user:
            item = {"role": "assistant", "content": msg["content"] or None}
            if msg.get("tool_calls"):
                item["tool_calls"] = msg["tool_calls"]
            out.append(item)
        elif role == "tool" and seen_user:
            out.append({"role": "tool", "tool_call_id": msg.get("tool_call_id"), "content": msg["content"]})
    return out


class StepCancels:
    """One cancel event per step, installed as the session's, so Stop reaches whichever step runs.

    A step that ends at ``Observation:`` is cancelled by the loop itself; only a set event the loop
    did not set means the user pressed Stop.
    """

    def __init__(self, holder, first: threading.Event):
        self.holder, self.current, self.ours = holder, first, False

    def next(self) -> threading.Event:
        """A fresh event for the next step (already set when the user stopped the previous one)."""
        old, ours = self.current, self.ours
        self.current, self.ours = threading.Event(), False
        self.holder.cancel = self.current
        if old.is_set() and not ours:
            self.current.set()
        return self.current

    def stop_step(self, stream) -> None:
        """End the running step (its reply reached a stop string)."""
        self.ours = True
        stream.cancel()

    @property
    def by_user(self) -> bool:
        """Whether the user stopped the current step."""
        return self.current.is_set() and not self.ours


def run_tool_reply(
    engine,
    messages: list[dict],
    system: str,
    tools: ToolSet,
    gen: dict,
    cancels: StepCancels,
    stats,
    examples: list[tuple[str, str]] | None = None,
    updates_per_second: float = 25.0,
    now: Callable[[], datetime] | None = None,
) -> Iterator[None]:
    """Run the ReAct loop, appending its steps to ``messages`` (a conversation's list) and updating
    ``stats`` (a :class:`ui.service.ReplyStats`); yields after every change there is to show."""
    settings = engine.settings(**gen)
    # The tool choice applies to the step that answers the user's message; a reply that continues after a
    # tool result is left to decide (forcing the call again would ask for the same result forever).
    choice = tools.first_choice() if messages[-1].get("role") == "user" else ("auto" if tools.active else "none")
    done_tokens, started = 0, time.perf_counter()
    for step in range(tools.max_steps + 1):
        plan = plan_tool_messages(
            openai_messages(system, list(examples or []), messages),
            tools=tools.schemas or None,
            tool_choice="none" if step == tools.max_steps else _openai_choice(choice),
        )
        ids = engine_prompt_ids(engine, plan, settings.max_window_size)
        cancel = cancels.next()
        if cancel.is_set():
            stats.finish_reason = "cancelled"
            return
        # A forced call (tool choice named/required) is kept valid by a grammar where the engine takes one.
        constraint = engine.tool_constraint(plan) if plan.forced_prefix else None
        stream = engine.stream_prompt(ids, settings, cancel, **({"constraint": constraint} if constraint else {}))
        reply = message("assistant", "")
        messages.append(reply)
        parser, stops = ToolReplyParser(plan, reply_id=reply["id"]), StopMatcher(plan.stop)
        stats.prompt_tokens = len(ids)
        try:
            for piece in coalesced(stream, updates_per_second):
                out = stops.feed(piece)
                if stops.hit:
                    cancels.stop_step(stream)
                reply["content"] += "".join(d.get("content", "") for d in parser.feed(out))
                stats.tokens = done_tokens + stream.tokens_so_far
                if stats.ttft_s is None:
                    stats.ttft_s = time.perf_counter() - started
                yield
                if stops.hit:
                    break
            parser.feed(stops.flush())
        finally:
            stream.close()
        res = stream.result
        done_tokens += res.completion_tokens
        stats.tokens, stats.seed = done_tokens, res.seed
        stats.tokens_per_s = res.tokens_per_s
        parser.finish()
        got = parser.message()
        reply["content"] = (got["content"] or "").strip()
        if cancels.by_user:
            reply["stopped"] = True
            stats.finish_reason = "cancelled"
            return
        if got.get("tool_calls") and res.finish_reason == "length":
            # Cut off inside the call: its arguments are incomplete, so it is neither run nor waited for.
            stats.finish_reason = "length"
            messages.append(message("event", "⚠️ " + localize(CUT_CALL)))
            return
        if not got.get("tool_calls"):
            stats.finish_reason = res.finish_reason if res.finish_reason != "cancelled" else "stop"
            return
        call = got["tool_calls"][0]
        reply["tool_calls"] = [call]
        name, arguments = call["function"]["name"], call["function"]["arguments"]
        if name in tools.builtin:
            result = run_builtin(name, arguments, now)
        elif name in tools.names:  # the user's own tool: the user gives its result (module docstring)
            stats.finish_reason = "tool_calls"
            return
        else:
            result = f"Error: there is no tool named {name!r}; the tools are: {', '.join(tools.names) or 'none'}"
        messages.append(message("tool", result, tool_call_id=call["id"], name=name))
        choice = "auto"
        yield
