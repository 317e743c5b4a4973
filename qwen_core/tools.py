"""Qwen-1's tool calling: OpenAI ``tools`` / ``functions`` requests turned into the ReAct prompt the models were aligned on.

The prompt is exactly the one Qwen's own ``openai_api.py`` (QwenLM/Qwen, ``parse_messages``, lines 166-307)
builds for ``functions``; line numbers below refer to that file. What this module adds on top:

- OpenAI's newer shapes map onto the original's ``functions``/``function_call``: ``tools[].function`` is a
  function; an assistant message with several ``tool_calls`` is replayed as successive Action/Observation
  pairs in order (Qwen-1 emits one action per step), each ``tool`` result matched by ``tool_call_id``.
- ``tool_choice: "none"`` keeps the tools out of the prompt; a history with tool calls is still rendered,
  as the original renders it when no ``functions`` are given (calls and observations written out, plain
  answers left as they are, no ``Observation:`` stop).
- ``tool_choice`` ``required`` / named are enforced by a forced start of the reply (``forced_prefix``).
- Inputs the original refuses with a 400 that have one obvious reading are accepted: several leading
  system/developer messages are joined, two user messages in a row are joined with a blank line (as
  :func:`qwen_core.engine.split_messages` does). Everything else it refuses is refused with a ValueError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .messages import Message
from .tokenizer import IM_END, IM_START
from .tool_history import flatten, strip, turns
from .tool_reply import ToolReplyParser

__all__ = ["REACT_INSTRUCTION", "TOOL_DESC", "ToolPlan", "ToolReplyParser", "engine_prompt_ids", "plan_tool_messages"]

# openai_api.py L166-169 and L171-186, word for word: the models were aligned on this text.
TOOL_DESC = (
    "{name_for_model}: Call this tool to interact with the {name_for_human} API."
    " What is the {name_for_human} API useful for? {description_for_model} Parameters: {parameters}"
)
REACT_INSTRUCTION = """Answer the following questions as best you can. You have access to the following APIs:

{tools_text}

Use the following format:

Question: the input question you must answer
Thought: you should always think about what to do
Action: the action to take, should be one of [{tools_name_text}]
Action Input: the input to the action
Observation: the result of the action
... (this Thought/Action/Action Input/Observation can be repeated zero or more times)
Thought: I now know the final answer
Final Answer: the final answer to the original input question

Begin!"""
STOP = ("Observation:", "Observation:\n")


@dataclass(frozen=True)
class ToolPlan:
    """How one tool-calling request is prompted (:func:`engine_prompt_ids`) and how its reply is read
    (:class:`ToolReplyParser`)."""

    system: str
    history: list[tuple[str, str]]  # (user, assistant) pairs exactly as parse_messages builds them
    query: str  # the last user turn; with a continuation, the user turn of the assistant turn being continued
    continuation: str | None  # the unfinished assistant turn the model continues (no <|im_end|>), or None
    stop: tuple[str, ...]  # ("Observation:", "Observation:\n") when tools are in the prompt
    forced_prefix: str  # text the reply is forced to start with (tool_choice required/named), else ""
    tool_names: tuple[str, ...]  # names the model may call; () when calls are off (tool_choice "none")
    legacy: bool  # functions/function_call: answers use message.function_call
    # name -> its parameters' JSON Schema, for a constraint on the arguments (qwen_core.grammar.tool_constraint)
    schemas: dict[str, dict] = field(default_factory=dict)


def _functions(tools: list | None, functions: list | None) -> list[dict]:
    """The request's functions in the original's ``functions`` shape, checked."""
    if tools and functions:
        raise ValueError("tools: give either tools or the legacy functions, not both")
    out: list[dict] = []
    for i, item in enumerate(tools or ()):
        where = f"tools[{i}]"
        if not isinstance(item, dict) or item.get("type", "function") != "function":
            raise ValueError(f"{where}.type: only function tools are supported (type 'function')")
        fn = item.get("function")
        if not isinstance(fn, dict):
            raise ValueError(f"{where}.function must be an object with a name")
        out.append(_check_function(fn, f"{where}.function"))
    for i, fn in enumerate(functions or ()):
        out.append(_check_function(fn, f"functions[{i}]"))
    names = [f.get("name_for_model", f["name"]) for f in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"tools: the name {sorted(dup)[0]!r} is used by more than one tool")
    return out


def _check_function(fn: Any, where: str) -> dict:
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
        raise ValueError(f"{where}.name must be a non-empty string")
    params = fn.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise ValueError(f"{where}.parameters must be a JSON Schema object")
    for key in ("description", "name_for_model", "name_for_human", "description_for_model"):
        if fn.get(key) is not None and not isinstance(fn[key], str):
            raise ValueError(f"{where}.{key} must be a string")
    return fn


def _instruction(functions: list[dict]) -> tuple[str, tuple[str, ...], dict[str, str], dict[str, dict]]:
    """The ReAct instruction (L204-230), the names, each name's human name and parameters schema."""
    lines, names, human, schemas = [], [], {}, {}
    for fn in functions:
        name = fn["name"]
        name_m = fn.get("name_for_model") or name
        name_h = fn.get("name_for_human") or name
        desc = fn.get("description") or ""
        # OpenAI allows a function without parameters (an empty argument list); the original needs the key.
        params = fn.get("parameters") if fn.get("parameters") is not None else {"type": "object", "properties": {}}
        lines.append(
            TOOL_DESC.format(
                name_for_model=name_m,
                name_for_human=name_h,
                description_for_model=fn.get("description_for_model") or desc,
                parameters=json.dumps(params, ensure_ascii=False),
            )
        )
        names.append(name_m)
        human[name_m] = name_h
        schemas[name_m] = params
    text = REACT_INSTRUCTION.format(tools_text="\n\n".join(lines), tools_name_text=", ".join(names))
    return strip(text), tuple(names), human, schemas


def _choice(tool_choice: Any, function_call: Any, names: tuple[str, ...]) -> str | None:
    """``tool_choice``/``function_call`` → "auto" | "none" | "required" | a tool name."""
    param = "function_call" if function_call is not None and tool_choice is None else "tool_choice"
    choice = function_call if param == "function_call" else tool_choice
    if choice is None or choice == "auto":
        return "auto"
    if choice == "none":
        return "none"
    if choice in ("required", "any"):
        if not names:
            raise ValueError(f"{param}: {choice!r} needs at least one tool in tools")
        return "required"
    if isinstance(choice, dict):
        fn = choice.get("function") if isinstance(choice.get("function"), dict) else choice
        name = fn.get("name")
        if isinstance(name, str):
            if name not in names:
                raise ValueError(f"{param}: no tool named {name!r} in tools")
            return name
    raise ValueError(
        f"{param} must be 'auto', 'none', 'required' or {{'type': 'function', 'function': {{'name': ...}}}}"
    )


def _forced_prefix(choice: str, human: dict[str, str], names: tuple[str, ...], continuing: bool) -> str:
    """The start of the reply that enforces tool_choice required/named.

    The thought is written the way Qwen's own ReAct examples word it ("Thought: I need to google Jay
    Chou.", examples/function_call_finetune_examples.py), so the model goes on in the format it was
    aligned on. Named: through "Action Input:", so the model writes only the arguments. Required: through
    "Action:", the model picks the name (one tool only: as named). A continuation already ends in
    "Thought:", so the prefix starts after it.
    """
    if choice == "required" and len(names) == 1:
        choice = names[0]
    if choice == "required":
        text = " I need to use one of the APIs.\nAction:"
    elif choice in human:
        text = f" I need to use the {human[choice]} API.\nAction: {choice}\nAction Input:"
    else:
        return ""
    return text if continuing else "Thought:" + text


def plan_tool_messages(
    messages: list[dict | Message],
    *,
    tools: list[dict] | None = None,
    tool_choice: Any = None,
    functions: list[dict] | None = None,
    function_call: Any = None,
    parallel_tool_calls: bool | None = None,
) -> ToolPlan | None:
    """The ReAct prompt plan for an OpenAI tool-calling request, or None when no tools apply.

    None: no tools/functions (or an empty list) or tool_choice/function_call "none", and no tool calls or
    results in the history; the caller then takes its ordinary chat path. ``parallel_tool_calls`` is
    accepted either way: Qwen-1 emits one action per step. Raises ValueError naming the parameter for
    invalid input.
    """
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise ValueError("parallel_tool_calls must be true or false")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    messages = [m.to_openai() if isinstance(m, Message) else m for m in messages]  # one shape below
    fns = _functions(tools, functions)
    names = tuple(f.get("name_for_model") or f["name"] for f in fns)
    choice = _choice(tool_choice, function_call, names)
    has_tool_history = any(
        isinstance(m, dict) and (m.get("role") in ("tool", "function") or m.get("tool_calls") or m.get("function_call"))
        for m in messages
    )
    tools_on = bool(fns) and choice != "none"
    if not tools_on and not has_tool_history:
        return None
    instruction, names, human, schemas = _instruction(fns) if tools_on else ("", (), {}, {})
    system, flat = flatten(messages)
    conv = turns(flat, tools_on)
    continuation = None
    if conv[-1][0] == "user":
        query = conv.pop()[1]
    else:  # L281-284: the last turn is the assistant's: the model continues it (text completion)
        continuation = conv.pop()[1]
        query = conv.pop()[1]
    pairs = [(conv[k][1], conv[k + 1][1]) for k in range(0, len(conv), 2)]
    if any(conv[k][0] != "user" or conv[k + 1][0] != "assistant" for k in range(0, len(conv), 2)):
        raise ValueError("messages: expecting exactly one user message before every assistant message")
    # L289-306: the instruction goes on the newest user turn of the history, the query only when the
    # history is empty (with a continuation, the continued turn counts as the newest history turn).
    history = [(strip(u), strip(a)) for u, a in pairs]
    query = strip(query)
    if instruction:
        if history and continuation is None:
            history[-1] = (f"{instruction}\n\nQuestion: {history[-1][0]}", history[-1][1])
        else:
            query = f"{instruction}\n\nQuestion: {query}"
    if continuation is not None:  # text_complete_last_message strips every turn once more (L361-362)
        query, continuation = strip(query), strip(continuation)
    forced = _forced_prefix(choice, human, names, continuation is not None and continuation.endswith("Thought:"))
    return ToolPlan(
        system=system,
        history=history,
        query=query,
        continuation=continuation,
        stop=STOP if tools_on else (),
        forced_prefix=forced if tools_on else "",
        tool_names=names,
        legacy=bool(functions) or (function_call is not None and tool_choice is None and not tools),
        schemas=schemas,
    )


def engine_prompt_ids(engine, plan: ToolPlan, max_window_size: int | None = None) -> list[int]:
    """The prompt token ids for ``plan``, ``plan.forced_prefix`` included (don't append it again).

    Without a continuation: the ChatML prompt of (query, history, system), as ``model.chat`` builds it.
    With one: the original's text-completion prompt (``text_complete_last_message``, L356-373): the same
    turns ending in the unfinished assistant turn, no ``<|im_end|>``. The original encodes that rendered
    text as one string; here each run of text between control tokens is encoded as one string, which gives
    the same ids, except that control-token text inside content stays plain text. Unlike the original,
    older turns are dropped as ``make_context`` drops them when the window is exceeded (newest kept).
    """
    window = engine.defaults.max_window_size if max_window_size is None else max_window_size
    tok = engine.tokenizer
    if plan.continuation is None:
        ids = engine.prompts.plan(plan.query, plan.history, plan.system, window).ids
        return ids + (tok.encode(plan.forced_prefix) if plan.forced_prefix else [])
    start, end = tok.im_start_id, tok.im_end_id
    system_ids = [start, *tok.encode(f"system\n{plan.system}"), end]

    def turn(user: str, assistant: str, last: bool) -> list[int]:
        ids = [*tok.encode("\n"), start, *tok.encode(f"user\n{user}"), end, *tok.encode("\n"), start]
        return ids + tok.encode(f"assistant\n{assistant}") + ([] if last else [end])

    kept = turn(plan.query, plan.continuation + plan.forced_prefix, True)
    for user, assistant in reversed(plan.history):
        ids = turn(user, assistant, False)
        if len(system_ids) + len(ids) + len(kept) >= window:
            break
        kept = ids + kept
    return system_ids + kept


def prompt_text(plan: ToolPlan) -> str:
    """The rendered prompt text of ``plan`` (for logs and the raw-prompt view), forced prefix included."""
    text = f"{IM_START}system\n{plan.system}{IM_END}"
    for user, assistant in plan.history:
        text += f"\n{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n{assistant}{IM_END}"
    text += f"\n{IM_START}user\n{plan.query}{IM_END}\n{IM_START}assistant\n"
    return text + (plan.continuation or "") + plan.forced_prefix
