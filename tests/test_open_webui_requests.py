"""Open WebUI (open-webui/open-webui) as an OpenAI-compatible connection to ``python app.py``.

The bodies below are what Open WebUI **0.12.4** (its latest release of main, read from the PyPI wheel
``open_webui-0.12.4-py3-none-any.whl``; ``open_webui/...`` there is ``backend/open_webui/...`` in the
repository, and the wheel's source maps hold ``src/lib/components/chat/Chat.svelte``) forwards to the
provider, i.e. after every field it pops for itself (``metadata``, ``params``, ``tool_ids``, ``files``,
``features``, ``variables``, ``chat_id``, ``background_tasks``, ...):

- ``routers/openai.py``: ``get_headers_and_cookies`` sends ``Content-Type: application/json`` and
  ``Authorization: Bearer <key>`` (no header for an empty key) on every request; the connection check
  ``verify_connection`` and the model list (``get_all_models_responses`` -> ``send_get_request``) are
  ``GET {url}/models``, read as ``data[*]`` needing ``id``. ``generate_chat_completion`` pops ``metadata``,
  applies a workspace model's params (``apply_model_params_to_body_openai``), sets the pipeline ``user`` dict
  (``name``, ``id``, ``email``, ``role``) when the model is a pipeline, renames ``max_completion_tokens`` to
  ``max_tokens`` for non-OpenAI URLs, turns a ``"token:bias,..."`` ``logit_bias`` into ``{"token": int}``
  (``utils/misc.py``, ``convert_logit_bias_input_to_json``), drops ``stream_options`` when not streaming
  and flattens list content of ``tool`` messages to text.
- ``main.py``, ``chat_completion``: ``stream_options: {"include_usage": true}`` is added to a streamed request
  when the model has the ``usage`` capability; ``/api/v1/messages`` (``generate_messages``) converts an
  Anthropic Messages body with ``utils/anthropic.py``, ``convert_anthropic_to_openai_payload``, which keeps
  ``cache_control`` on text parts (system and user) and on tools, and forwards it through the same path.
- ``utils/payload.py``: ``apply_params_to_form_data`` copies every chat/user param to the top level unfiltered
  (no casting: the advanced-params panel's Ollama knobs ``repeat_penalty``, ``mirostat``, ``num_ctx``,
  ``keep_alive``, ``think``, ... reach an OpenAI connection too), except Open WebUI's own
  (``stream_response``, ``function_calling``, ``reasoning_tags``, ``system``, ...); ``custom_params`` values are
  JSON-decoded and merged (that is how a ``reasoning: {"effort": ...}`` object gets sent);
  ``apply_model_params_to_body_openai`` casts temperature/top_p/min_p/frequency_penalty/presence_penalty to
  float, max_tokens to int, reasoning_effort to str, stop to a list of unescaped strings.
  ``components/chat/Chat.svelte``, ``sendMessageSocket``: ``stream`` (default true), ``params`` with ``stop``
  from ``getStopTokens()`` (a list), an optional system message.
- ``utils/middleware.py``, ``process_chat_payload``: native function calling (the default) adds
  ``tools: [{"type": "function", "function": spec}]``, built-in specs from ``utils/tools.py``
  (``get_builtin_tools``, ``get_builtin_tool_spec``: pydantic + LangChain's ``convert_to_openai_function`` over
  ``tools/builtin.py``; the specs here were generated that way); retrieved file context is prepended to the
  last user message with the RAG template (``apply_source_context_to_messages``, ``<source id=...>`` tags).
  The tool loop re-sends ``{**form_data, "stream": true}`` with ``convert_output_to_messages``
  (``utils/misc.py``): ``{"role": "assistant", "content": "" or the text, "tool_calls": [{"id", "type":
  "function", "function": {"name", "arguments": str}}]}`` then ``{"role": "tool", "tool_call_id", "content"}``.
  Streams are read line by line: ``data:`` payloads, ``[DONE]`` skipped, ``usage`` from any chunk,
  ``choices[0].delta.content`` / ``reasoning_content`` / ``tool_calls``.
- ``routers/tasks.py`` (``generate_title``; tags, follow-ups and queries alike) with ``utils/task.py``:
  ``{"model", "messages": [{"role": "user", "content": template}], "stream": false}`` and ``metadata`` (popped);
  the title is the JSON object found in ``choices[0].message.content``.

Forks (one is indexed as this repository) also set ``stream_options.include_usage`` in ``openai.py``, map
``reasoning_effort`` to ``reasoning: {"effort"}`` and put ``cache_control`` on the last part: shapes tested here.
"""

from __future__ import annotations

import json

import httpx
import pytest
from server_process import AppProcess

KEY = "sk-open-webui-test"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
N = 6
CHAT = [{"role": "user", "content": "Tell me about the sea"}, {"role": "assistant", "content": "It is vast."}]
# DEFAULT_RAG_TEMPLATE (config.py), abridged, filled with one <source> as get_source_context writes it.
RAG = (
    "### Task:\nRespond to the user query using the provided context, incorporating inline citations in the "
    'format [id] **only when the <source> tag includes an explicit id attribute** (e.g., <source id="1">).\n\n'
    '<context>\n<source id="1" name="sea.txt" resource-type="file" resource-id="f1">The sea covers 71% of '
    "Earth.</source>\n</context>\n"
)
# DEFAULT_TITLE_GENERATION_PROMPT_TEMPLATE (config.py) with {{MESSAGES:END:2}} as get_messages_content fills it.
TITLE_PROMPT = """### Task:
Generate a concise title summarizing the chat history.
### Guidelines:
- The title should clearly represent the main theme or subject of the conversation.
- Keep it short: 2-4 words is best.
- Do not use emojis, quotation marks, or special formatting.
- Write the title in the chat's primary language; default to English if multilingual.
- Prioritize accuracy over creativity.
- Your entire response must consist solely of the JSON object, without any introductory or concluding text.
- The output must be a single, raw JSON object, without any markdown code fences or other encapsulating text.
- Ensure no conversational text, affirmations, or explanations precede or follow the raw JSON output, as this will cause direct parsing failure.
### Output:
JSON format: { "title": "your concise title here" }
### Examples:
- { "title": "Stock Trends" },
- { "title": "Chocolate Chip Cookies" },
- { "title": "Music Streaming" },
- { "title": "Remote Work" }
### Chat History:
<chat_history>
USER: Tell me about the sea
ASSISTANT: It is vast.
</chat_history>"""


def _fn(name: str, description: str, properties: dict, required: list | None = None) -> dict:
    parameters = {"properties": properties, **({"required": required} if required else {}), "type": "object"}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


def _int(description: str, default: int | None = None) -> dict:
    return {**({"default": default} if default is not None else {}), "description": description, "type": "integer"}


_DAYS = "Number of {} to subtract from current time (default: 0)"
# get_builtin_tools' time and web-search tools (enabled by default / with web search), as get_builtin_tool_spec builds them.
BUILTIN_TOOLS = [
    _fn("get_current_timestamp", "Get the current Unix timestamp in seconds.", {}),
    _fn(
        "calculate_timestamp",
        "Get the current Unix timestamp, optionally adjusted by days, weeks, months, or years.\nUse this to "
        'calculate timestamps for date filtering in search functions.\nExamples: "last week" = weeks_ago=1, '
        '"3 days ago" = days_ago=3, "a year ago" = years_ago=1',
        {f"{u}s_ago": _int(_DAYS.format(f"{u}s"), 0) for u in ("day", "week", "month", "year")},
    ),
    _fn(
        "search_web",
        "Search the public web for information. Best for current events, external references,\nor topics not "
        "covered in internal documents.",
        {
            "query": {"description": "The search query to look up", "type": "string"},
            "count": _int("Number of results to return (default: admin-configured value)"),
        },
        ["query"],
    ),
    _fn(
        "fetch_url",
        "Fetch and extract the main text content from a web page URL.",
        {"url": {"description": "The URL to fetch content from", "type": "string"}},
        ["url"],
    ),
]


@pytest.fixture(scope="module")
def app(ckpt_dir, tmp_path_factory):
    """The app with ``--api-key``: the key an Open WebUI admin types into the connection."""
    proc = AppProcess(
        ["--model", str(ckpt_dir), "--device", "cpu", "--api-key", KEY,
         "--data-dir", str(tmp_path_factory.mktemp("data"))],
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def model(app) -> str:
    with httpx.Client(timeout=60) as c:
        return c.get(f"{app.url}/v1/models", headers=HEADERS).json()["data"][0]["id"]


def post(app, body: dict) -> dict:
    """A non-streamed request as ``generate_chat_completion`` sends it; the reply Open WebUI parses."""
    with httpx.Client(timeout=120) as c:
        r = c.post(f"{app.url}/v1/chat/completions", content=json.dumps(body), headers=HEADERS)
    assert r.status_code == 200, r.text
    data = r.json()
    assert isinstance(data["choices"][0]["message"]["content"], str), data
    return data


def stream(app, body: dict) -> tuple[str, dict | None, list, list[str]]:
    """A streamed request, read as Open WebUI reads it: (text, last usage, tool-call deltas, raw events)."""
    text, usage, calls, events = [], None, [], []
    with httpx.Client(timeout=120) as c:
        with c.stream("POST", f"{app.url}/v1/chat/completions", content=json.dumps(body), headers=HEADERS) as r:
            assert r.status_code == 200, r.read()
            assert "text/event-stream" in r.headers["content-type"]
            for line in r.iter_lines():
                if not line.strip():
                    continue
                events.append(line)
                assert line.startswith("data:"), line
                payload = line[len("data:") :].strip()
                if payload == "[DONE]":
                    continue
                data = json.loads(payload)
                assert "error" not in data, data
                usage = data.get("usage") or usage
                for choice in data.get("choices") or []:
                    delta = choice.get("delta") or {}
                    text.append(delta.get("content") or "")
                    calls.extend(delta.get("tool_calls") or [])
    assert events[-1] == "data: [DONE]"
    return "".join(text), usage, calls, events


def usage_before_done(events: list[str], usage: dict | None) -> None:
    assert usage and usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert json.loads(events[-2][len("data:") :])["usage"] == usage  # the last chunk before [DONE]


def test_connection_check_and_model_list(app, ckpt_dir):
    """``verify_connection`` / ``send_get_request``: ``GET {url}/models`` with the connection's headers."""
    with httpx.Client(timeout=60) as c:
        r = c.get(f"{app.url}/v1/models", headers=HEADERS)
        no_key = c.get(f"{app.url}/v1/models", headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    ids = [m["id"] for m in r.json()["data"]]
    assert ckpt_dir.name in ids and all(isinstance(i, str) and i for i in ids)
    # An empty key sends no Authorization: Open WebUI shows the JSON error (verify_connection returns it).
    assert no_key.status_code == 401 and "error" in no_key.json()


def test_streamed_chat_with_model_params(app, model):
    """A chat turn: usage capability on, the advanced params set, file context in the user message."""
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"{RAG}\nTell me about the sea"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.8, "top_p": 0.9, "min_p": 0.05, "top_k": 40, "max_tokens": N,
        "frequency_penalty": 0.5, "presence_penalty": 0.3, "seed": 42, "stop": ["\nUser:"],
        "logit_bias": {"151643": -100, "151645": -100},
    }  # fmt: skip
    text, usage, _, events = stream(app, body)
    assert text
    usage_before_done(events, usage)
    assert usage["completion_tokens"] == N  # the end tokens are biased away, so max_tokens ends it


def test_more_stop_strings_than_openai_takes(app, model):
    """The Stop Sequence field takes any number of strings (``getStopTokens`` splits it on commas); vLLM and
    llama.cpp take them all, so do we (up to 32; OpenAI's limit is 4)."""
    stops = ["<|im_end|>", "<|endoftext|>", "\nUser:", "\nHuman:", "\nAssistant:", "###", "</s>", "\n\n\n"]
    messages = CHAT + [{"role": "user", "content": "And the ocean?"}]
    body = {"model": model, "messages": messages, "stream": False, "max_tokens": N, "stop": stops}
    data = post(app, body)
    assert data["choices"][0]["finish_reason"] in ("stop", "length")


def test_advanced_params_panel_ollama_fields_are_ignored(app, model):
    """``apply_params_to_form_data`` forwards the panel's Ollama-only knobs to an OpenAI connection too."""
    body = {
        "model": model, "messages": CHAT + [{"role": "user", "content": "And the ocean?"}], "stream": False,
        "max_tokens": N, "repeat_penalty": 1.1, "repeat_last_n": 64, "mirostat": 0, "mirostat_eta": 0.1,
        "mirostat_tau": 5.0, "tfs_z": 1.0, "num_ctx": 2048, "num_batch": 512, "num_keep": 24, "num_thread": 4,
        "num_gpu": 1, "use_mmap": True, "use_mlock": False, "keep_alive": "5m", "think": False, "format": "json",
    }  # fmt: skip
    assert post(app, body)["usage"]["completion_tokens"] <= N


@pytest.mark.parametrize("streamed", [False, True])
def test_content_parts_with_ephemeral_cache_control(app, model, streamed):
    """``/api/v1/messages`` -> ``convert_anthropic_to_openai_payload``: parts and tools keep ``cache_control``."""
    eph = {"type": "ephemeral"}
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "You are terse.", "cache_control": eph}]},
            {"role": "user", "content": "Tell me about the sea"},
            {"role": "assistant", "content": "It is vast."},
            {"role": "user", "content": [{"type": "text", "text": "More?"},
                                         {"type": "text", "text": "Briefly.", "cache_control": eph}]},
        ],
        "max_tokens": N,
        "tools": [{**BUILTIN_TOOLS[0], "cache_control": eph}],
    }  # fmt: skip
    if not streamed:
        assert post(app, body)["usage"]["prompt_tokens"] > 0
        return
    _, usage, _, events = stream(app, {**body, "stream": True, "stream_options": {"include_usage": True}})
    usage_before_done(events, usage)


def test_native_tool_calling_and_the_tool_loop_follow_up(app, model):
    """Native function calling: the built-in tools, then the replayed call and its result."""
    question = {"role": "user", "content": "What was the date 3 days ago?"}
    first = {"model": model, "messages": [question], "stream": True,
             "stream_options": {"include_usage": True}, "max_tokens": N, "tools": BUILTIN_TOOLS}  # fmt: skip
    _, usage, calls, events = stream(app, first)
    usage_before_done(events, usage)
    for call in calls:  # whatever the random model wrote, a streamed call is one Open WebUI can assemble
        assert isinstance(call["index"], int)
        assert isinstance(call.get("function", {}).get("arguments", ""), str)
    call = {"id": "call_9f2c", "type": "function",
            "function": {"name": "calculate_timestamp", "arguments": '{"days_ago": 3}'}}  # fmt: skip
    result = {"current_timestamp": 1767225600, "current_iso": "2026-01-01T00:00:00+00:00",
              "calculated_timestamp": 1766966400, "calculated_iso": "2025-12-29T00:00:00+00:00"}  # fmt: skip
    follow_up = {
        **first,
        "messages": [
            question,
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result, ensure_ascii=False)},
        ],
    }
    for content in ("", "Let me check."):  # "" for a bare call, else the text the model wrote before it
        follow_up["messages"][1]["content"] = content
        _, usage, _, events = stream(app, follow_up)
        usage_before_done(events, usage)


def test_title_generation_task(app, model):
    """``generate_title``: one user message holding the filled template, not streamed."""
    data = post(app, {"model": model, "messages": [{"role": "user", "content": TITLE_PROMPT}], "stream": False})
    # Open WebUI slices content from the first "{" to the last "}" and falls back when that is no JSON.
    assert len(data["choices"]) == 1 and data["choices"][0]["finish_reason"] in ("stop", "length")
    assert data["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize(
    "extra",
    [
        {"reasoning_effort": "medium"},
        {"reasoning": {"effort": "high"}},
        {"reasoning_effort": "low", "service_tier": "auto"},
    ],
    ids=["reasoning_effort", "custom-param-reasoning", "anthropic-output-config"],
)
def test_reasoning_fields_are_accepted(app, model, extra):
    """A ``reasoning_effort`` param (string), a ``reasoning`` custom param, ``output_config.effort``."""
    body = {"model": model, "messages": CHAT + [{"role": "user", "content": "Why?"}], "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": N, **extra}  # fmt: skip
    _, usage, _, events = stream(app, body)
    usage_before_done(events, usage)


def test_pipeline_user_dict(app, model):
    """``generate_chat_completion`` on a pipeline model: ``user`` is a dict of the Open WebUI user."""
    user = {"name": "Ada Lovelace", "id": "3f1c2b7e-0d4a-4c35-9a8e-2b1f6d0e9c11", "email": "ada@example.com",
            "role": "user"}  # fmt: skip
    post(app, {"model": model, "messages": [{"role": "user", "content": "Hi"}], "stream": False,
               "max_tokens": N, "user": user})  # fmt: skip
