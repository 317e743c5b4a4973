"""JSON output: qwen_core.grammar constraints on the tiny random model, through the engine's real decode path.

The random model writes gibberish, so whatever it writes under a constraint shows what the constraint
guarantees: every reply must parse and validate against its schema (``jsonschema``), greedy and sampled.
Schemas are closed (``additionalProperties: false``, bounded strings/arrays) so a random model reaches the
end of the value well within the token budget; open schemas are checked as far as they go.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from qwen_core import grammar
from qwen_core.grammar import constraint_for, tool_constraint
from qwen_core.tools import ToolReplyParser, engine_prompt_ids, plan_tool_messages

VOCAB = 151_936


def closed(properties: dict, required: list[str] | None = None) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


SCHEMAS = {
    "required_fields": closed({"a": {"type": "integer"}, "ok": {"type": "boolean"}}),
    "enum": closed({"color": {"enum": ["red", "green", "blue"]}}),
    "bounded_integer": closed({"n": {"type": "integer", "minimum": 1, "maximum": 10}}),
    "number": closed({"x": {"type": "number"}}),
    "short_string": closed({"s": {"type": "string", "maxLength": 6}}),
    "pattern": closed({"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}}),
    "array": closed({"tags": {"type": "array", "items": {"enum": ["x", "y"]}, "minItems": 1, "maxItems": 3}}),
    "nested": closed(
        {
            "person": closed({"name": {"type": "string", "maxLength": 4}, "age": {"type": "integer", "minimum": 0}}),
            "role": {"enum": ["admin", "user"]},
        }
    ),
    "optional": closed({"a": {"type": "integer"}, "b": {"type": "null"}}, required=["a"]),
    "any_of": closed({"v": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 99}, {"type": "boolean"}]}}),
    "const": closed({"kind": {"const": "point"}, "xy": {"type": "array", "items": {"type": "integer"}, "maxItems": 2}}),
    "top_array": {"type": "array", "items": {"type": "integer", "maximum": 99, "minimum": 0}, "maxItems": 4},
}


def json_schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}


class Checked:
    """Wraps the constraint the engine runs with and checks every mask it applies on the way."""

    def __init__(self, inner, tokenizer):
        self.inner, self.tok, self.steps = inner, tokenizer, 0

    def mask_logits(self, scores: torch.Tensor) -> None:
        self.inner.mask_logits(scores)
        allowed = torch.isfinite(scores)
        assert not allowed[len(self.tok) :].any(), "padding ids are never allowed"
        specials = {self.tok.eod_id + i for i in allowed[self.tok.eod_id : len(self.tok)].nonzero().flatten().tolist()}
        assert specials <= {self.tok.eod_id, self.tok.im_end_id}, "no control token but the stops"
        assert bool(allowed[self.tok.im_end_id]) == self.inner.is_complete(), "<|im_end|> only once the JSON is whole"
        self.steps += 1

    def accept_token(self, token_id: int) -> None:
        self.inner.accept_token(token_id)

    def is_finished(self) -> bool:
        return self.inner.is_finished()


def reply(engine, constraint, **gen) -> tuple[str, str]:
    with engine.stream_chat("Give me JSON.", constraint=Checked(constraint, engine.tokenizer), **gen) as stream:
        text = stream.text()
    return text, stream.result.finish_reason


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@pytest.mark.parametrize(
    "sampling", [{"do_sample": False}, {"do_sample": True, "seed": 1}, {"do_sample": True, "seed": 7, "top_p": 1.0}]
)
def test_every_reply_validates(engine, name, sampling):
    schema = SCHEMAS[name]
    text, finish = reply(
        engine, constraint_for(json_schema_format(schema), engine.tokenizer, VOCAB), max_new_tokens=300, **sampling
    )
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), schema)


def test_json_object_mode(engine):
    """json_object: any JSON object."""
    # the random model never closes a string on its own: favour the tokens that close strings and objects
    bias = {engine.tokenizer.encode(t)[0]: b for t, b in (('"}', 9.0), ('":', 9.0), ("}", 6.0))}
    for seed in range(4):
        c = constraint_for({"type": "json_object"}, engine.tokenizer, VOCAB)
        text, finish = reply(engine, c, max_new_tokens=200, do_sample=True, seed=seed, logit_bias=bias)
        assert finish == "stop", text
        assert isinstance(json.loads(text), dict)


def test_padding_and_control_tokens_never_inside(engine):
    c = constraint_for(json_schema_format(SCHEMAS["short_string"]), engine.tokenizer, VOCAB)
    checked = Checked(c, engine.tokenizer)
    with engine.stream_chat("x", constraint=checked, max_new_tokens=300, do_sample=True, seed=3) as stream:
        text = stream.text()
    assert checked.steps > 3 and json.loads(text)


def test_text_and_absent_formats_mean_no_constraint(tokenizer):
    assert constraint_for(None, tokenizer, VOCAB) is None
    assert constraint_for({"type": "text"}, tokenizer, VOCAB) is None


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ({"type": "xml"}, "response_format: type 'xml' is not supported"),
        ({"type": "json_schema"}, "response_format: json_schema must be an object"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": []}}, "response_format: json_schema.schema"),
        (json_schema_format({"type": "strin"}), "response_format: the JSON schema can't be used"),
    ],
)
def test_unusable_formats_are_refused(tokenizer, fmt, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        constraint_for(fmt, tokenizer, VOCAB)


def test_compiled_schemas_are_cached(tokenizer):
    schema = closed({"cached": {"type": "integer"}})
    constraint_for(json_schema_format(schema), tokenizer, VOCAB)
    size = len(grammar._compiled)
    for _ in range(3):
        c = constraint_for(json_schema_format(dict(reversed(schema.items()))), tokenizer, VOCAB)
    assert len(grammar._compiled) == size  # same schema, key order aside: compiled once
    assert not c.is_complete()  # each reply gets its own fresh matcher


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": closed({"city": {"enum": ["Paris", "Rome"]}, "days": {"type": "integer", "maximum": 9}}),
        },
    },
    {"type": "function", "function": {"name": "ping", "parameters": closed({})}},
]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "ping"}}])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forced_tool_calls_always_parse(engine, choice, seed):
    """tool_choice required/named: the forced prefix plus the arguments grammar give a valid call."""
    plan = plan_tool_messages([{"role": "user", "content": "hi"}], tools=TOOLS, tool_choice=choice)
    constraint = tool_constraint(plan, engine.tokenizer, VOCAB)
    settings = engine.settings(do_sample=True, seed=seed, max_new_tokens=120)
    parser = ToolReplyParser(plan, reply_id="t")
    with engine.stream_prompt(engine_prompt_ids(engine, plan), settings, constraint=constraint) as stream:
        for piece in stream:
            parser.feed(piece)
    _, finish = parser.finish()
    call = parser.message()["tool_calls"][0]["function"]
    assert finish == "tool_calls" and stream.result.finish_reason == "stop"
    if isinstance(choice, dict):
        assert call["name"] == "ping"
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}[call["name"]]
    jsonschema.validate(json.loads(call["arguments"]), schema)


def test_no_constraint_without_forcing(tokenizer):
    plan = plan_tool_messages([{"role": "user", "content": "hi"}], tools=TOOLS)
    assert tool_constraint(plan, tokenizer, VOCAB) is None


def test_strict_schemas_and_tool_arguments_only_have_the_declared_keys(engine):
    """LangChain leaves additionalProperties out; strict (and tool arguments) mean exactly these keys."""
    schema = {"type": "object", "properties": {"a": {"enum": [1, 2]}, "b": {"type": "object", "properties": {}}}}
    assert grammar.closed_objects(schema)["additionalProperties"] is False
    assert grammar.closed_objects(schema)["properties"]["b"]["additionalProperties"] is False
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    for seed in range(3):
        text, finish = reply(
            engine, constraint_for(fmt, engine.tokenizer, VOCAB), max_new_tokens=120, do_sample=True, seed=seed
        )
        assert finish == "stop"
        jsonschema.validate(json.loads(text), grammar.closed_objects(schema))
