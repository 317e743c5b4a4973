"""The chat's safe built-in tools (a calculator, the date and time) and checks on pasted function schemas.

Nothing here can reach a shell, the file system or the network: the calculator walks Python's ``ast`` of
the expression and evaluates only numbers, arithmetic and a whitelist of ``math`` functions, with bounds on
the size of every intermediate number and on the work done; the clock only reads the time and zoneinfo's
time-zone data. Each tool's result is the text the model gets as its ``Observation``; a bad input gives a
result that says what was wrong (the model can then try again), never an exception.
"""

from __future__ import annotations

import ast
import json
import math
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MAX_EXPRESSION_CHARS = 500
MAX_ZONE_CHARS = 64  # IANA zone names are at most ~32 characters; longer ones are refused
MAX_NODES = 400  # syntax-tree nodes one expression may have
MAX_DEPTH = 100  # nesting of operations (a sum of n terms nests n - 1 deep)
MAX_INT_BITS = 4096  # about 1233 decimal digits: every intermediate integer stays below this
MAX_SECONDS = 0.5  # wall time one evaluation may take (checked between operations)


class CalcError(ValueError):
    """The expression can't be evaluated; the message says why."""


def _bits(x: float | int) -> int:
    return abs(x).bit_length() if isinstance(x, int) else 0


def _check(x: Any) -> float | int:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise CalcError("only real numbers are supported")
    if isinstance(x, int) and _bits(x) > MAX_INT_BITS:
        raise CalcError(f"the result is too large (more than {MAX_INT_BITS} bits)")
    if isinstance(x, float) and math.isnan(x):
        raise CalcError("the result is not a number")
    if isinstance(x, float) and math.isinf(x):
        raise CalcError("the result is too large for a floating-point number")
    return x


def _pow(a: float | int, b: float | int) -> float | int:
    # Refused before computing: 9**9**9 would take minutes and gigabytes.
    if isinstance(a, int) and isinstance(b, int) and b >= 0 and abs(a) > 1 and b * math.log2(abs(a)) > MAX_INT_BITS:
        raise CalcError(f"the power is too large (more than {MAX_INT_BITS} bits)")
    if isinstance(a, float) or isinstance(b, float) or b < 0:
        try:
            return math.pow(a, b)
        except (OverflowError, ValueError) as exc:
            raise CalcError(f"the power can't be computed ({exc})") from None
    return a**b


def _bounded(limit: int, fn: Callable) -> Callable:
    """``fn`` for integer arguments up to ``limit`` (factorial(10**6) would take minutes)."""

    def call(*args):
        if any(isinstance(a, int) and abs(a) > limit for a in args):
            raise CalcError(f"{fn.__name__}() takes arguments up to {limit}")
        return fn(*args)

    call.__name__ = fn.__name__
    return call


def _round(x: float | int, digits: int = 0) -> float | int:
    # round(5, -10**100) would compute 10**(10**100): the digits are bounded.
    if not isinstance(digits, int) or isinstance(digits, bool) or abs(digits) > 100:
        raise CalcError("round() takes a whole number of digits between -100 and 100")
    return round(x, digits)


FUNCTIONS: dict[str, Callable] = {
    **{
        name: getattr(math, name)
        for name in "sqrt exp log log10 log2 sin cos tan asin acos atan atan2 sinh cosh tanh hypot degrees radians "
        "floor ceil fabs trunc".split()
    },
    "factorial": _bounded(1000, math.factorial),
    "comb": _bounded(10_000, math.comb),
    "perm": _bounded(10_000, math.perm),
    "gcd": math.gcd,
    "abs": abs,
    "round": _round,
    "min": min,
    "max": max,
}
CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
_BINARY: dict[type, Callable] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: _pow,
}
_UNARY: dict[type, Callable] = {ast.UAdd: lambda a: +a, ast.USub: lambda a: -a}


class _Evaluator:
    def __init__(self) -> None:
        self.deadline = time.monotonic() + MAX_SECONDS

    def eval(self, node: ast.AST, depth: int = 0) -> float | int:
        if depth > MAX_DEPTH:
            raise CalcError(f"the expression is nested too deeply (more than {MAX_DEPTH} levels)")
        if time.monotonic() > self.deadline:
            raise CalcError("the expression takes too long to evaluate")
        if isinstance(node, ast.Constant):
            return _check(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            a, b = self.eval(node.left, depth + 1), self.eval(node.right, depth + 1)
            if type(node.op) is ast.Mult and _bits(a) + _bits(b) > MAX_INT_BITS:
                raise CalcError(f"the result is too large (more than {MAX_INT_BITS} bits)")
            try:
                return _check(_BINARY[type(node.op)](a, b))
            except ZeroDivisionError:
                raise CalcError("division by zero") from None
            except OverflowError:
                raise CalcError("the result is too large for a floating-point number") from None
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _check(_UNARY[type(node.op)](self.eval(node.operand, depth + 1)))
        if isinstance(node, ast.Name):
            if node.id in CONSTANTS:
                return CONSTANTS[node.id]
            raise CalcError(f"unknown name {node.id!r}; constants: {', '.join(CONSTANTS)}")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                what = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
                raise CalcError(f"{what!r} is not an allowed function; allowed: {', '.join(sorted(FUNCTIONS))}")
            if node.keywords:
                raise CalcError("functions take positional arguments only")
            args = [self.eval(a, depth + 1) for a in node.args]
            try:
                return _check(FUNCTIONS[node.func.id](*args))
            except CalcError:
                raise
            except (TypeError, ValueError, OverflowError) as exc:
                raise CalcError(f"{node.func.id}(): {exc}") from None
        raise CalcError(f"{type(node).__name__} is not allowed: only numbers, + - * / // % **, parentheses and "
                        "math functions")  # fmt: skip


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression safely; returns the result as text (raises :class:`CalcError`)."""
    if not isinstance(expression, str) or not expression.strip():
        raise CalcError("the expression is empty")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalcError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise CalcError(f"not a valid expression ({getattr(exc, 'msg', exc)})") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalcError(f"the expression is too long (more than {MAX_NODES} parts)")
    value = _Evaluator().eval(tree.body)
    if isinstance(value, float):
        return repr(int(value)) if value.is_integer() and abs(value) < 1e15 else format(value, ".15g")
    return str(value)


_ZONE = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+){0,2}")


def current_time(tz: str | None = None, now: Callable[[], datetime] | None = None) -> str:
    """The current date and time in the IANA time zone ``tz`` (UTC when empty), as text."""
    name = (tz or "UTC").strip() or "UTC"
    # Only well-formed zone names reach zoneinfo, so no name can point it at another file.
    if len(name) > MAX_ZONE_CHARS or not _ZONE.fullmatch(name):
        raise ValueError(f"{name[:MAX_ZONE_CHARS]!r} is not an IANA time zone name (like 'Europe/Paris' or 'UTC')")
    try:
        zone = timezone.utc if name.upper() == "UTC" else ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; use an IANA name like 'Asia/Shanghai'") from None
    moment = (now or (lambda: datetime.now(timezone.utc)))().astimezone(zone)
    offset = moment.strftime("%z")
    return f"{moment:%Y-%m-%d %H:%M:%S} {moment.tzname()} ({moment:%A}), UTC{offset[:3]}:{offset[3:]}, {name}"


# The built-ins as OpenAI function schemas: the model sees exactly these (Qwen's TOOL_DESC line per tool).
BUILTIN_SCHEMAS: dict[str, dict] = {
    "calculator": {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluates an arithmetic expression exactly: numbers, + - * / // % ** and parentheses, "
            "math functions such as sqrt, log, sin, factorial, and the constants pi and e.",
            "parameters": {
                "type": "object",
                # maxLength: a forced call (held to this schema by the grammar) is one the evaluator takes.
                "properties": {
                    "expression": {
                        "type": "string",
                        "description": "e.g. (3 + 4) * 2 ** 10",
                        "maxLength": MAX_EXPRESSION_CHARS,
                    }
                },
                "required": ["expression"],
            },
        },
    },
    "current_time": {
        "type": "function",
        "function": {
            "name": "current_time",
            "description": "Gives the current date, time and weekday in a time zone.",
            "parameters": {
                "type": "object",
                "properties": {
                    "timezone": {
                        "type": "string",
                        "description": "IANA name, e.g. Asia/Shanghai; UTC",
                        "maxLength": MAX_ZONE_CHARS,
                    }
                },
            },
        },
    },
}


def _arguments(text: str, main: str) -> dict:
    """The call's arguments: a JSON object, or (as models often write) the bare value of ``main``."""
    text = (text or "").strip()
    try:
        args = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {main: text.strip("`\"' ")}
    return args if isinstance(args, dict) else {main: str(args)}


def run_builtin(name: str, arguments: str, now: Callable[[], datetime] | None = None) -> str:
    """Run built-in tool ``name`` with the model's ``Action Input``; the observation text (errors included)."""
    try:
        if name == "calculator":
            return calculate(str(_arguments(arguments, "expression").get("expression", "")))
        if name == "current_time":
            return current_time(str(_arguments(arguments, "timezone").get("timezone") or "UTC"), now)
    except ValueError as exc:
        return f"Error: {exc}"
    raise KeyError(name)
