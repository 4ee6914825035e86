"""The safe evaluator: Python's arithmetic values on arithmetic, None on anything else,
without executing the input and within bounded time."""

import time

import pytest

from dss_jax.data.safe_eval import MAX_DEPTH, MAX_LENGTH, evaluate


@pytest.mark.parametrize(
    "expr,value",
    [
        ("( 84.0 / 2.0 )", 42.0),
        ("(84 / 2)", 42.0),
        ("( ( 14.0 - 2.0 ) - 10.0 )", 2.0),
        ("7 * 36", 252.0),
        ("-3 + +4", 1.0),
        ("-(2 - 5) * 2", 6.0),
        ("2 - 3 - 4", -5.0),  # left-associative
        ("2 + 3 * 4", 14.0),  # precedence
        ("24 / 4 / 2", 3.0),
        (".5 + 4. + 1e2 + 1_000", 1104.5),
        ("0.1 + 0.2", 0.1 + 0.2),  # the same float rounding as Python
        ("1 / 3", 1 / 3),
        ("  (1 + 2)  ", 3.0),
        ("05.5", 5.5),
        ("10000000000000001 * 1", float(10000000000000001)),  # exact int arithmetic, then float
    ],
)
def test_values_match_python(expr, value):
    assert evaluate(expr) == value


HOSTILE = [
    "__import__('os').system('echo pwned')",
    "().__class__.__bases__[0].__subclasses__()",
    "(1).real",
    "x + 1",
    "some - 8",
    "abs(-3)",
    "open('/etc/passwd')",
    "lambda: 1",
    "[1, 2]",
    "(175, 5)",
    "(34 + 40) and (62 - 17)",
    "1 if 1 else 2",
    "2 ** 3",
    "9 ** 9 ** 9 ** 9",
    "2 * * 3",
    "7 // 2",
    "7 % 2",
    "1 < 2",
    "05",  # a SyntaxError in Python 3
    "1.2.3",
    "3x",
    "0x10",
    "1j",
    "1e400",  # overflows to inf
    "1" * 200,  # beyond the magnitude bound
    "(1 / 0)",
    "1 + ",
    "(1 + 2",
    "1 + 2)",
    "()",
    "",
    "   ",
    "1\n+ 2",
    "1; 2",
    "'1'",
]


@pytest.mark.parametrize("expr", HOSTILE)
def test_rejects_without_executing(expr, capfd):
    assert evaluate(expr) is None
    assert "pwned" not in capfd.readouterr().out


def test_rejects_non_strings():
    assert evaluate(None) is None
    assert evaluate(3) is None


def test_bounded_length_depth_and_time():
    start = time.perf_counter()
    assert evaluate("1+" * (MAX_LENGTH // 2) + "1") is None  # too long
    assert evaluate("(" * 10_000 + "1" + ")" * 10_000) is None  # too long and too deep
    deep = "(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1)
    assert len(deep) < MAX_LENGTH and evaluate(deep) is None
    assert evaluate("-" * 500 + "1") is None
    assert evaluate("(" * 20 + "1" + ")" * 20) == 1.0
    # The largest product the length bound allows is refused by the magnitude bound.
    assert evaluate(" * ".join(["9" * 90] * 10)) is None
    assert evaluate(" * ".join(["9" * 30] * 3)) == float(int("9" * 30) ** 3)
    assert evaluate("1e99 * 10") == 1e100 and evaluate("1e100 * 10") is None
    assert time.perf_counter() - start < 1.0
