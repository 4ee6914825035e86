"""A safe arithmetic evaluator for SVAMP-style equation labels.

SVAMP labels are equations such as `( 84.0 / 2.0 )`; a prediction is right when its
equation has the same *value* as the gold one. The reference implementation calls
Python's `eval` on model output, which runs arbitrary code. This module accepts only

    expr   := term  (("+" | "-") term)*
    term   := unary (("*" | "/") unary)*
    unary  := ("+" | "-") unary | atom
    atom   := NUMBER | "(" expr ")"

with NUMBER a Python decimal literal (`42`, `0`, `4.`, `.5`, `1e3`, `1_000`), and
computes it with Python's own number semantics (int literals stay exact ints, `/` is
true division), so a value equals what `eval` would give for the same string. The
result is returned as a float, the way the reference compares values (numpy arrays of
float64). Anything else (names, calls, attribute access, `**`, `//`, `%`, commas,
`and`) gives None without being executed. Length, nesting depth and magnitude are
bounded, so no input can hang or exhaust memory.
"""

from __future__ import annotations

import math
import re
from typing import Optional, Union

MAX_LENGTH = 1000  # characters; SVAMP labels are under 50
MAX_DEPTH = 64  # nested parentheses and unary signs
MAX_MAGNITUDE = 1e100  # any literal or intermediate value beyond this is rejected

Number = Union[int, float]

# Python's decimal literal grammar (no hex/octal/binary/imaginary): an integer is
# either zeros only or starts with 1-9 (`05` is a SyntaxError in Python 3, so None here).
_DIGITS = r"[0-9](?:_?[0-9])*"
_EXPONENT = rf"[eE][+-]?{_DIGITS}"
_POINT_FLOAT = rf"(?:{_DIGITS})?\.{_DIGITS}|{_DIGITS}\."
_FLOAT = rf"(?:(?:{_POINT_FLOAT})(?:{_EXPONENT})?|{_DIGITS}{_EXPONENT})"
_INT = r"(?:[1-9](?:_?[0-9])*|0+(?:_?0)*)"
_TOKEN = re.compile(rf"[ \t\f]*(?:(?P<float>{_FLOAT})|(?P<int>{_INT})|(?P<op>[-+*/()]))")
# A number glued to a letter, digit or dot (`3x`, `1.2.3`, `05`) is not a literal.
_AFTER_NUMBER = re.compile(r"[0-9A-Za-z_.]")


class _Reject(Exception):
    """Internal: the input is outside the accepted language or bounds."""


def _tokenize(text: str) -> list[Union[str, Number]]:
    tokens: list[Union[str, Number]] = []
    pos = 0
    end = len(text.rstrip(" \t\f"))
    while pos < end:
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _Reject
        pos = m.end()
        if m.group("op") is not None:
            tokens.append(m.group("op"))
            continue
        if pos < len(text) and _AFTER_NUMBER.match(text, pos):
            raise _Reject
        value: Number = float(m.group("float")) if m.group("float") else int(m.group("int"))
        tokens.append(_bounded(value))
    return tokens


def _bounded(value: Number) -> Number:
    if isinstance(value, float) and not math.isfinite(value):
        raise _Reject
    if abs(value) > MAX_MAGNITUDE:
        raise _Reject
    return value


class _Parser:
    """Recursive descent over the token list; depth is bounded by MAX_DEPTH."""

    def __init__(self, tokens: list[Union[str, Number]]):
        self.tokens = tokens
        self.i = 0

    def peek(self) -> Union[str, Number, None]:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> Union[str, Number, None]:
        token = self.peek()
        self.i += 1
        return token

    def expr(self, depth: int) -> Number:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term(depth)
            value = _bounded(value + rhs if op == "+" else value - rhs)
        return value

    def term(self, depth: int) -> Number:
        value = self.unary(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.unary(depth)
            if op == "*":
                value = _bounded(value * rhs)
            else:
                if rhs == 0:
                    raise _Reject
                value = _bounded(value / rhs)
        return value

    def unary(self, depth: int) -> Number:
        if depth > MAX_DEPTH:
            raise _Reject
        token = self.peek()
        if token in ("+", "-"):
            self.take()
            operand = self.unary(depth + 1)
            return operand if token == "+" else -operand
        return self.atom(depth)

    def atom(self, depth: int) -> Number:
        token = self.take()
        if token == "(":
            value = self.expr(depth + 1)
            if self.take() != ")":
                raise _Reject
            return value
        if isinstance(token, (int, float)) and not isinstance(token, bool):
            return token
        raise _Reject


def evaluate(expr: str) -> Optional[float]:
    """The value of an arithmetic expression, or None when it is not one we accept.

    Never executes the input; bounded in length (MAX_LENGTH), nesting (MAX_DEPTH) and
    magnitude (MAX_MAGNITUDE). Division by zero gives None (the reference's `eval`
    raises, which it scores as NaN, i.e. never equal).
    """
    if not isinstance(expr, str) or len(expr) > MAX_LENGTH:
        return None
    try:
        tokens = _tokenize(expr.lstrip(" \t\f"))
        if not tokens:
            return None
        parser = _Parser(tokens)
        value = parser.expr(0)
        if parser.i != len(tokens):
            return None
        result = float(value)
    except (_Reject, OverflowError, ValueError):
        return None
    return result if math.isfinite(result) else None
