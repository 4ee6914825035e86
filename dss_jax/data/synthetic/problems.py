"""Arithmetic word problems in the spirit of SVAMP, generated from templates.

A problem is a short story, a question, and the expression tree that answers it:

    Josh had 19 marbles. He lost 11 marbles and then found 5 more.   <- body (+ distractors)
    How many marbles does Josh have now?                             <- question
    ( ( 19.0 - 11.0 ) + 5.0 )                                        <- gold label (SVAMP style)

Leaves of the tree (`Num`) are the numbers of the story; inner nodes (`Op`) carry the
sentence a step-by-step solver says for that step, with `CALC` where "19 - 11 = 8" goes.
The teacher's restatement (`Problem.intro`) and those sentences refer to leaves by
`Num.ref`, not by value, so a teacher that misreads a number (see teacher.py)
restates the misread number consistently, as a real model does.

The templates (templates.py) keep the gold arithmetic in positive integers (differences
are positive, divisions exact); `templates.generate_problem` draws one, checks that
(`check`), and may add a distractor sentence (`add_distractor`) whose number the answer
must not use. This module imports nothing of the package: the templates build on it.
"""

from __future__ import annotations

import dataclasses
import fractions
import random
import re
from typing import Optional, Sequence, Union

CALC = "\x01"  # stands for "a + b = c" in a step sentence
_REF = "\x00"  # "\x00<slot>\x00" stands for a leaf's value in the teacher's sentences
OPS = ("+", "-", "*", "/")


# --------------------------------------------------------------------------------------
# Expression trees
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Num:
    value: int
    slot: int  # which number of the story this is (leaves sharing a slot share a value)

    def __str__(self) -> str:
        return str(self.value)

    @property
    def ref(self) -> str:
        return f"{_REF}{self.slot}{_REF}"


@dataclasses.dataclass(frozen=True)
class Op:
    op: str
    left: "Expr"
    right: "Expr"
    say: str  # the solver's sentence for this step, with CALC for the computation


Expr = Union[Num, Op]


def value(expr: Expr) -> fractions.Fraction:
    """Exact value (a wrong teacher may divide unevenly); ZeroDivisionError if it divides by 0."""
    if isinstance(expr, Num):
        return fractions.Fraction(expr.value)
    a, b = value(expr.left), value(expr.right)
    return {"+": a + b, "-": a - b, "*": a * b}.get(expr.op) if expr.op != "/" else a / b


def steps(expr: Expr) -> list[Op]:
    """Inner nodes in the order a solver computes them (post-order)."""
    if isinstance(expr, Num):
        return []
    return steps(expr.left) + steps(expr.right) + [expr]


def leaves(expr: Expr) -> list[Num]:
    return [expr] if isinstance(expr, Num) else leaves(expr.left) + leaves(expr.right)


def operation_count(expr: Expr) -> int:
    return len(steps(expr))


def gold_label(expr: Expr) -> str:
    """SVAMP's label style: every operation parenthesised, numbers as floats."""
    if isinstance(expr, Num):
        return f"{expr.value}.0"
    return f"( {gold_label(expr.left)} {expr.op} {gold_label(expr.right)} )"


_ADDITIVE = ("+", "-")


def _same_class(a: str, b: str) -> bool:
    return (a in _ADDITIVE) == (b in _ADDITIVE)


def _compact(expr: Expr, top: bool) -> str:
    if isinstance(expr, Num):
        return str(expr.value)
    left = expr.left
    # A left operand of the same precedence needs no parentheses: 17 + 15 + 2.
    if isinstance(left, Op) and _same_class(left.op, expr.op):
        left_text = _compact(left, top=True)
    else:
        left_text = _compact(left, top=False)
    text = f"{left_text} {expr.op} {_compact(expr.right, top=False)}"
    return text if top else f"({text})"


def compact_label(expr: Expr) -> str:
    """A chain-of-thought teacher's equation style: `(17 + 15 + 2)`, `((3 * 8) + 5)`."""
    return f"({_compact(expr, top=True)})"


def replace_leaves(expr: Expr, values: dict[int, int]) -> Expr:
    """The tree with the leaves of the given slots set to new values."""
    if isinstance(expr, Num):
        return Num(values.get(expr.slot, expr.value), expr.slot)
    return dataclasses.replace(expr, left=replace_leaves(expr.left, values), right=replace_leaves(expr.right, values))


def replace_op(expr: Expr, index: int, op: str) -> Expr:
    """The tree with its step number `index` (post-order) computing `op` instead."""
    target = steps(expr)[index]

    def walk(node: Expr) -> Expr:
        if node is target:
            return dataclasses.replace(node, op=op)
        if isinstance(node, Num):
            return node
        return dataclasses.replace(node, left=walk(node.left), right=walk(node.right))

    return walk(expr)


def fill_refs(text: str, slot_values: dict[int, int]) -> str:
    """Replaces each leaf reference in a teacher sentence by its slot's value."""
    parts = text.split(_REF)
    # Odd parts are slot numbers.
    return "".join(str(slot_values[int(p)]) if i % 2 else p for i, p in enumerate(parts))


# --------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
    body: tuple[str, ...]  # the story's sentences
    question: str
    expr: Expr
    intro: str  # the teacher's restatement of the relevant facts (with leaf refs)
    names: tuple[str, ...] = ()  # people in the story (distractors avoid them)
    nouns: tuple[str, ...] = ()  # things counted in the story (distractors avoid them)
    distractors: tuple[int, ...] = ()  # numbers in the story the answer must not use
    template: str = ""

    @property
    def text(self) -> str:
        """The model input, SVAMP-style: body, newline, question."""
        return " ".join(self.body) + "\n" + self.question

    @property
    def answer(self) -> int:
        return int(value(self.expr))

    @property
    def label(self) -> str:
        return gold_label(self.expr)

    def slot_values(self) -> dict[int, int]:
        return {leaf.slot: leaf.value for leaf in leaves(self.expr)}


# --------------------------------------------------------------------------------------
# Entities
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Person:
    name: str
    subj: str  # he / she
    obj: str  # him / her
    poss: str  # his / her

    @property
    def Subj(self) -> str:  # a capitalised pronoun starts a sentence
        return self.subj.capitalize()


_HE = ("he", "him", "his")
_SHE = ("she", "her", "her")
PEOPLE = tuple(
    Person(n, *p)
    for n, p in [
        ("Tom", _HE),
        ("Mia", _SHE),
        ("Luke", _HE),
        ("Julia", _SHE),
        ("Sam", _HE),
        ("Anna", _SHE),
        ("Ben", _HE),
        ("Lena", _SHE),
        ("Josh", _HE),
        ("Faye", _SHE),
        ("David", _HE),
        ("Emma", _SHE),
        ("Ravi", _HE),
        ("Priya", _SHE),
        ("Carlos", _HE),
        ("Sofia", _SHE),
        ("Omar", _HE),
        ("Aisha", _SHE),
        ("Kenji", _HE),
        ("Yuki", _SHE),
        ("Peter", _HE),
        ("Nora", _SHE),
        ("Jack", _HE),
        ("Grace", _SHE),
        ("Leo", _HE),
        ("Chloe", _SHE),
        ("Max", _HE),
        ("Lucy", _SHE),
        ("Ivan", _HE),
        ("Hana", _SHE),
    ]
)
OBJECTS = (
    "apples",
    "marbles",
    "stickers",
    "books",
    "pencils",
    "cookies",
    "cards",
    "shells",
    "stamps",
    "balloons",
    "crayons",
    "candies",
    "flowers",
    "coins",
    "erasers",
    "beads",
    "oranges",
    "cupcakes",
    "toy cars",
    "comics",
    "rocks",
    "buttons",
    "ribbons",
    "puzzles",
    "lemons",
    "feathers",
)
CONTAINERS = (
    ("box", "boxes"),
    ("bag", "bags"),
    ("basket", "baskets"),
    ("pack", "packs"),
    ("jar", "jars"),
    ("crate", "crates"),
    ("tray", "trays"),
    ("bucket", "buckets"),
)
OUTER = (("shelf", "shelves"), ("cart", "carts"), ("truck", "trucks"), ("room", "rooms"), ("cabinet", "cabinets"))
PLACES = (
    "at the park",
    "at the beach",
    "at school",
    "at the library",
    "at the market",
    "in the garden",
    "at the zoo",
    "at the museum",
    "on the farm",
    "at the playground",
)
DAYS = ("on Monday", "on Tuesday", "on Wednesday", "on Thursday", "on Friday", "on Saturday", "on Sunday")
COLLECT = (("collected", "collect"), ("found", "find"), ("got", "get"), ("picked up", "pick up"))
GAINS = ("bought {n} more {obj}", "found {n} more {obj}", "got {n} more {obj} from {friend}", "won {n} more {obj}")
LOSSES = ("gave {n} {obj} to {friend}", "lost {n} {obj}", "used {n} {obj}", "sold {n} {obj}")
# (third person, past, base, what, period)
RATES = (
    ("reads", "read", "read", "pages", "day"),
    ("walks", "walked", "walk", "miles", "day"),
    ("earns", "earned", "earn", "dollars", "hour"),
    ("bakes", "baked", "bake", "cookies", "day"),
    ("swims", "swam", "swim", "laps", "day"),
    ("plants", "planted", "plant", "trees", "week"),
    ("solves", "solved", "solve", "puzzles", "week"),
    ("saves", "saved", "save", "dollars", "week"),
    ("folds", "folded", "fold", "paper cranes", "hour"),
    ("paints", "painted", "paint", "pictures", "week"),
)
ITEMS = (
    ("notebook", "notebooks"),
    ("pen", "pens"),
    ("ticket", "tickets"),
    ("sandwich", "sandwiches"),
    ("toy", "toys"),
    ("shirt", "shirts"),
    ("book", "books"),
    ("cake", "cakes"),
    ("ball", "balls"),
    ("kite", "kites"),
    ("lamp", "lamps"),
    ("hat", "hats"),
    ("mug", "mugs"),
    ("plant", "plants"),
)
MAKERS = (
    ("machine", "bottles"),
    ("bakery", "muffins"),
    ("workshop", "chairs"),
    ("printer", "posters"),
    ("factory", "toys"),
    ("kitchen", "pies"),
)
VEHICLES = (("bus", "passengers"), ("train", "passengers"), ("ferry", "people"), ("tram", "riders"))


def join_and(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# --------------------------------------------------------------------------------------
# Drawing numbers and entities
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NumberRange:
    low: int = 2  # story numbers are drawn from [low, high]
    high: int = 50

    @property
    def small_high(self) -> int:  # counts of groups, friends, days: small numbers
        return max(2, min(9, self.high))


class Draw:
    """Random choices of one problem; numbers drawn here become numbered leaves."""

    def __init__(self, rng: random.Random, numbers: NumberRange):
        self.rng = rng
        self.numbers = numbers
        self._slots = 0
        self._people: list[Person] = []
        self._nouns: list[str] = []

    def leaf(self, value: int) -> Num:
        self._slots += 1
        return Num(value, self._slots - 1)

    def num(self, low: Optional[int] = None, high: Optional[int] = None) -> int:
        return self.rng.randint(self.numbers.low if low is None else low, self.numbers.high if high is None else high)

    def num_except(self, *taken: int) -> int:
        """A number unlike `taken` (a spare number in the story must not look like a used one)."""
        options = [x for x in range(self.numbers.low, self.numbers.high + 1) if x not in taken]
        return self.pick(options)

    def small(self) -> int:
        return self.rng.randint(2, self.numbers.small_high)

    def pair(self) -> tuple[int, int]:
        """Two different numbers, larger first."""
        a, b = self.rng.sample(range(self.numbers.low, self.numbers.high + 1), 2)
        return max(a, b), min(a, b)

    def pick(self, options: Sequence):
        return options[self.rng.randrange(len(options))]

    def coin(self, p: float = 0.5) -> bool:
        return self.rng.random() < p

    def person(self) -> Person:
        p = self.pick([p for p in PEOPLE if p not in self._people])
        self._people.append(p)
        return p

    def noun(self, options: Sequence[str] = OBJECTS) -> str:
        n = self.pick([o for o in options if o not in self._nouns])
        self._nouns.append(n)
        return n

    def problem(
        self, body: Sequence[str], question: str, expr: Expr, intro: str, distractors: Sequence[int] = ()
    ) -> Problem:
        return Problem(
            tuple(body),
            question,
            expr,
            intro,
            tuple(p.name for p in self._people),
            tuple(self._nouns),
            tuple(distractors),
        )


def add(a: Expr, b: Expr, say: str) -> Op:
    return Op("+", a, b, say)


def sub(a: Expr, b: Expr, say: str) -> Op:
    return Op("-", a, b, say)


def mul(a: Expr, b: Expr, say: str) -> Op:
    return Op("*", a, b, say)


def div(a: Expr, b: Expr, say: str) -> Op:
    return Op("/", a, b, say)


# --------------------------------------------------------------------------------------
# Distractors and drawing a problem
# --------------------------------------------------------------------------------------

_PRONOUN_START = re.compile(r"(Then )?(he|she|it|they)\b", re.IGNORECASE)
_LANDMARKS = ("library", "school", "park", "museum", "zoo", "market", "station")
_RELATIVES = ("sister", "brother", "cousin", "neighbor", "friend")


def add_distractor(d: Draw, problem: Problem) -> Problem:
    """The problem with one sentence more, whose number the answer must not use."""
    used = {leaf.value for leaf in leaves(problem.expr)} | set(problem.distractors) | {problem.answer}
    candidates = [x for x in range(d.numbers.low, d.numbers.high + 1) if x not in used]
    if not candidates:
        return problem
    x = d.pick(candidates)
    who = problem.names[0] if problem.names else d.person().name
    kind = d.rng.randrange(5)
    if kind == 0:
        sentence = f"{d.person().name} has {x} {d.noun()}."
    elif kind == 1:
        sentence = f"{who} is {x} years old."
    elif kind == 2:
        sentence = f"The {d.pick(_LANDMARKS)} is {x} miles away."
    elif kind == 3:
        sentence = f"It was {x} degrees outside that day."
    else:
        sentence = f"{who}'s {d.pick(_RELATIVES)} has {x} {d.noun()}."
    # After the first sentence (it sets the scene), and never just before a sentence that
    # starts with a pronoun, which would then point at the distractor's subject.
    spots = [
        i
        for i in range(1, len(problem.body) + 1)
        if i == len(problem.body) or not _PRONOUN_START.match(problem.body[i])
    ]
    at = d.pick(spots)
    body = problem.body[:at] + (sentence,) + problem.body[at:]
    return dataclasses.replace(problem, body=body, distractors=problem.distractors + (x,))


def check(problem: Problem, operations: int) -> None:
    """A template bug (not bad luck) if the gold arithmetic leaves positive integers."""
    if len(steps(problem.expr)) != operations:
        raise AssertionError(f"{problem.template}: {len(steps(problem.expr))} operations, asked for {operations}")
    for node in steps(problem.expr) + leaves(problem.expr):
        v = value(node)
        if v.denominator != 1 or v <= 0:
            raise AssertionError(f"{problem.template}: step value {v} in {problem.text!r}")
