"""A scripted chain-of-thought "teacher" for the synthetic problems, wrong like a real one.

It answers in the svamp family's format, so the project's parser splits its output as
it splits a real model's:

    Tom had 5 apples and bought 3 more apples. Now he has 5 + 3 = 8 apples. The answer is (5 + 3).

and, like a few-shot prompted LLM, sometimes keeps going with an invented exemplar
("\\n\\nQ: ...") that the parser cuts off. Each completion has one of four outcomes:

    correct     right rationale, right label
    slip        an arithmetic slip in the rationale ("5 + 3 = 9", carried into later
                steps); the label (an equation) is still right
    wrong       a wrong label, with errors a model makes:
                  wrong_operation  subtracts instead of adding, adds instead of multiplying, ...
                  distractor       uses the number of a sentence that does not matter
                  misread          copies a number wrongly (47 -> 74)
                  label_typo       right reasoning, then a wrong number in the final equation
    unparsable  no answer phrase: cut off mid-way, "So the answer is 8.", or rambling
                into an invented question before answering
"""

from __future__ import annotations

import dataclasses
import fractions
import operator
import random
from typing import Callable, Optional

from dss_jax.data import parsers
from dss_jax.data.synthetic.problems import (
    CALC,
    Expr,
    Problem,
    compact_label,
    fill_refs,
    leaves,
    replace_leaves,
    replace_op,
    steps,
    value,
)

FAMILY = "svamp"
ANSWER_PHRASE = "The answer is"
OUTCOMES = ("correct", "slip", "wrong", "unparsable")
WRONG_KINDS = ("wrong_operation", "distractor", "misread", "label_typo")
UNPARSABLE_KINDS = ("truncated", "no_answer_phrase", "rambles")


def format_number(x: fractions.Fraction) -> str:
    """An integer as is; anything else (a wrong teacher's uneven division) to two decimals."""
    if x.denominator == 1:
        return str(x.numerator)
    return f"{float(x):.2f}".rstrip("0").rstrip(".")


def rationale(problem: Problem, expr: Optional[Expr] = None, slip: Optional[tuple[int, int]] = None) -> str:
    """The step-by-step rationale of `expr` (default: the problem's own tree).

    The restatement names the tree's leaves (a misread number is restated misread); each
    step shows its operands and result. `slip` = (step, delta) shows that step's result
    off by delta and carries the wrong value into the steps after it.
    """
    expr = problem.expr if expr is None else expr
    slot_values = {leaf.slot: leaf.value for leaf in leaves(expr)}
    shown: dict[int, fractions.Fraction] = {}  # id(node) -> the value the teacher wrote for it

    def shown_value(node: Expr) -> fractions.Fraction:
        return shown[id(node)] if id(node) in shown else value(node)

    sentences = [fill_refs(problem.intro, slot_values)]
    for i, node in enumerate(steps(expr)):
        a, b = shown_value(node.left), shown_value(node.right)
        if node.op == "/":
            result = a / b if b else fractions.Fraction(0)
        else:
            result = {"+": operator.add, "-": operator.sub, "*": operator.mul}[node.op](a, b)
        if slip is not None and slip[0] == i:
            result += slip[1]
        shown[id(node)] = result
        calc = f"{format_number(a)} {node.op} {format_number(b)} = {format_number(result)}"
        sentences.append(fill_refs(node.say, slot_values).replace(CALC, calc))
    return " ".join(sentences)


# --------------------------------------------------------------------------------------
# Mistakes
# --------------------------------------------------------------------------------------

_OTHER_OP = {"+": "-", "-": "+", "*": "+", "/": "*"}


def _misread(x: int, rng: random.Random) -> int:
    digits = str(x)
    if len(digits) == 2 and digits[0] != digits[1] and digits[1] != "0":
        return int(digits[::-1])  # 47 -> 74
    return max(1, x + rng.choice((-3, -2, -1, 1, 2, 3))) if x > 3 else x + rng.choice((1, 2, 3))


def _wrong_tree(problem: Problem, kind: str, rng: random.Random) -> Optional[Expr]:
    """The tree after one mistake of `kind`, or None when the problem offers no such mistake."""
    expr = problem.expr
    if kind == "wrong_operation":
        i = rng.randrange(len(steps(expr)))
        return replace_op(expr, i, _OTHER_OP[steps(expr)[i].op])
    if kind == "distractor":
        if not problem.distractors:
            return None
        slot = rng.choice(sorted({leaf.slot for leaf in leaves(expr)}))
        return replace_leaves(expr, {slot: rng.choice(problem.distractors)})
    # misread, label_typo
    leaf = rng.choice(leaves(expr))
    return replace_leaves(expr, {leaf.slot: _misread(leaf.value, rng)})


def _differs(expr: Expr, gold: fractions.Fraction) -> bool:
    try:
        return value(expr) != gold
    except ZeroDivisionError:
        return False


@dataclasses.dataclass(frozen=True)
class Answer:
    """One teacher completion, and what went into it."""

    completion: str
    outcome: str
    kind: str  # the mistake (or "" when correct)
    rationale: Optional[str]  # what the teacher meant to say (None when unparsable)
    label: Optional[str]


def _with_answer(text: str, label: str) -> str:
    return f"{text} {ANSWER_PHRASE} {label}."


def _continuation(invent: Callable[[], Problem], rng: random.Random) -> str:
    """An invented next exemplar, cut off somewhere, as an LLM without a stop sequence writes."""
    other = invent()
    words = _with_answer(rationale(other), compact_label(other.expr)).split(" ")
    question = other.text.replace("\n", " ")
    return f"\n\nQ: {question}\nA: " + " ".join(words[: rng.randint(1, len(words))])


def answer(
    problem: Problem, outcome: str, rng: random.Random, invent: Callable[[], Problem], continuation_rate: float
) -> Answer:
    """The teacher's completion for `problem` with the given outcome.

    `invent` draws another problem (for invented continuations); with probability
    `continuation_rate` a parsable completion rambles on into one.
    """
    gold = value(problem.expr)
    if outcome == "correct":
        result = Answer("", outcome, "", rationale(problem), compact_label(problem.expr))
    elif outcome == "slip":
        i = rng.randrange(len(steps(problem.expr)))
        delta = rng.choice((-10, -2, -1, 1, 2, 10))
        result = Answer(
            "", outcome, "arithmetic_slip", rationale(problem, slip=(i, delta)), compact_label(problem.expr)
        )
    elif outcome == "wrong":
        kinds = list(WRONG_KINDS)
        rng.shuffle(kinds)
        for kind in kinds:
            tree = _wrong_tree(problem, kind, rng)
            if tree is not None and _differs(tree, gold):
                break
        else:  # unreachable with positive leaves: a misread number always changes the value
            raise AssertionError(f"no wrong answer found for {problem.text!r}")
        said = rationale(problem) if kind == "label_typo" else rationale(problem, tree)
        result = Answer("", outcome, kind, said, compact_label(tree))
    elif outcome == "unparsable":
        kind = rng.choice(UNPARSABLE_KINDS)
        said = rationale(problem)
        if kind == "truncated":  # hit the token limit mid-way
            words = said.split(" ")
            text = " ".join(words[: rng.randint(max(1, len(words) // 3), len(words) - 1)])
        elif kind == "no_answer_phrase":
            text = f"{said} So the answer is {problem.answer}."
        else:  # answers an invented question first
            text = said + _continuation(invent, rng)
        result = Answer(text, outcome, kind, None, None)
    else:
        raise ValueError(f"unknown outcome {outcome!r}; expected one of {OUTCOMES}")

    if result.label is not None:
        text = _with_answer(result.rationale, result.label)
        if rng.random() < continuation_rate:
            text += _continuation(invent, rng)
        result = dataclasses.replace(result, completion=text)
    _check_parse(result)
    return result


def _check_parse(result: Answer) -> None:
    """The completion must parse back to what was meant, so the cache is what it claims."""
    parsed = parsers.parse_completion(FAMILY, result.completion)
    if result.outcome == "unparsable":
        if parsed.ok:
            raise AssertionError(f"an unparsable completion parsed: {result.completion!r}")
    elif (parsed.rationale, parsed.label) != (result.rationale, result.label):
        raise AssertionError(
            f"completion {result.completion!r} parsed as {parsed}, meant ({result.rationale!r}, {result.label!r})"
        )


def assign_outcomes(
    n: int, rng: random.Random, error_rate: float, slip_rate: float, unparsable_rate: float
) -> list[str]:
    """Outcomes of n completions: exactly round(n * rate) of each, at random positions."""
    counts = {"unparsable": round(n * unparsable_rate), "wrong": round(n * error_rate), "slip": round(n * slip_rate)}
    if sum(counts.values()) > n:
        raise ValueError(f"error, slip and unparsable rates add up to more than 1: {counts} of {n}")
    outcomes = [o for o, k in counts.items() for _ in range(k)]
    outcomes += ["correct"] * (n - len(outcomes))
    rng.shuffle(outcomes)
    return outcomes
