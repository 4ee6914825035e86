"""Split a teacher's raw chain-of-thought completion into rationale and label.

A few-shot prompted teacher answers the question, then usually keeps going and invents
further exemplars ("\\n\\nQ: ..." or "\\n\\nPremise: ..."). Each dataset family has its own
answer phrase; the parsers cut the invented continuation, find the phrase and split:

    family   continuation starts with   answer phrase
    svamp    "Q:"                       "The answer is (<equation>)."
    cqa      "Q:"                       "So the answer is (<letter>) <choice>."
    anli1    "Premise:"                 "So the answer is <label>."      ("nli" is an alias)
    esnli    (none)                     "<rationale>\\nAnswer: <label>"  (label ends at "Premise")

The rules follow the reference implementation (google-research/distilling-step-by-step)
so that parsed records agree with it on the released PaLM completions. Where the
reference falls back to an empty label (or would fail), the result here has
`label=None` and the record counts as unparsed. Two deliberate differences, both
outside the released files: an answer phrase that occurs more than once before the cut
is ambiguous (unparsed here; the reference fails or mis-splits), and the NLI label
loses its final "." only when it has one (the reference drops the last character
unconditionally).

Label judging (`labels_match`) follows the reference's scoring: SVAMP equations by
value (with the safe evaluator, never `eval`), every other family by exact text.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional

from dss_jax.data import safe_eval

FAMILIES = ("svamp", "cqa", "anli1", "esnli")
ALIASES = {"nli": "anli1"}


class Parsed(NamedTuple):
    rationale: Optional[str]
    label: Optional[str]

    @property
    def ok(self) -> bool:
        return self.rationale is not None and self.label is not None


def canonical_family(family: str) -> str:
    """The family name that the parsers know ("nli" -> "anli1"); ValueError otherwise."""
    name = ALIASES.get(family, family)
    if name not in FAMILIES:
        known = ", ".join(FAMILIES + tuple(ALIASES))
        raise ValueError(f"unknown dataset family {family!r}; known families: {known}")
    return name


def _nonempty(text: Optional[str]) -> Optional[str]:
    if text is None:
        return None
    text = text.strip()
    return text or None


def _split_once(head: str, phrase: str) -> Optional[tuple[str, str]]:
    """(before, after) around the single occurrence of `phrase`; None if 0 or 2+."""
    # Two finds, not str.split: a completion that repeats the phrase 70,000 times
    # would otherwise build a list of all the pieces only to count them.
    first = head.find(phrase)
    if first < 0 or head.find(phrase, first + len(phrase)) >= 0:
        return None
    return head[:first], head[first + len(phrase) :]


def _equation(text: str) -> Optional[str]:
    """From the first "(" to the last ")" of its line, on the first line that has such a pair.

    What the regex `\\([^\\n]*\\)` finds with `search`, in linear time: the regex retries
    from every "(" and rescans the rest of the line each time, which is quadratic in a
    line of unclosed "(" (200,000 of them took 16 s, holding the GIL). Each round below
    either answers or moves `start` past a newline, scanning no character twice.
    """
    start = 0
    while True:
        open_at = text.find("(", start)
        close_at = text.find(")", open_at) if open_at >= 0 else -1
        if close_at < 0:
            return None
        newline = text.rfind("\n", open_at, close_at)
        if newline >= 0:  # this "(" has no ")" on its line; retry from the line of the ")"
            start = newline + 1
            continue
        line_end = text.find("\n", close_at)
        return text[open_at : text.rfind(")", open_at, line_end if line_end >= 0 else len(text)) + 1]


# A CQA choice marker: one character (not a newline) in parentheses, "(a)" ... "(e)".
# Fixed width, so each search is linear; only the first two are looked for.
_CHOICE_MARKER = re.compile(r"\([^\n]\)")


def _parse_svamp(completion: str) -> Parsed:
    head = completion.split("Q:", 1)[0]
    split = _split_once(head, "The answer is")
    if split is None:
        return Parsed(None, None)
    before, after = split
    return Parsed(_nonempty(before), _equation(after))


def _parse_cqa(completion: str) -> Parsed:
    head = completion.split("Q:", 1)[0]
    split = _split_once(head, "So the answer is")
    if split is None:
        return Parsed(None, None)
    before, after = split
    # The choice text runs from the first marker to the next marker (if any).
    first = _CHOICE_MARKER.search(after)
    label = None
    if first is not None:
        second = _CHOICE_MARKER.search(after, first.end())
        label = after[first.end() : second.start() if second else len(after)].strip()
        if label.endswith("."):
            label = label[:-1]
    return Parsed(_nonempty(before), _nonempty(label))


def _parse_anli(completion: str) -> Parsed:
    head = completion.split("Premise:", 1)[0]
    split = _split_once(head, "So the answer is")
    if split is None:
        return Parsed(None, None)
    before, after = split
    label = after.strip()
    if label.endswith("."):
        label = label[:-1]
    return Parsed(_nonempty(before), _nonempty(label))


def _parse_esnli(completion: str) -> Parsed:
    rationale, marker, rest = completion.partition("Answer:")
    if not marker:
        return Parsed(_nonempty(rationale), None)
    # The reference reads the label after "Answer: " (with the space).
    label = rest[1:] if rest.startswith(" ") else None
    if label is not None:
        label = label.split("Premise", 1)[0]
    return Parsed(_nonempty(rationale), _nonempty(label))


_PARSERS = {
    "svamp": _parse_svamp,
    "cqa": _parse_cqa,
    "anli1": _parse_anli,
    "esnli": _parse_esnli,
}


def parse_completion(family: str, completion: str) -> Parsed:
    """Rationale and label of one raw completion; missing parts are None."""
    parser = _PARSERS[canonical_family(family)]
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a string, got {type(completion).__name__}")
    return parser(completion)


def labels_match(family: str, predicted: Optional[str], gold: Optional[str]) -> bool:
    """Whether a predicted label counts as right, as the reference scores it.

    svamp: both equations evaluate (safely) to the same value; anything that does not
    evaluate is wrong. Other families: exact text equality. A None label is wrong.
    """
    family = canonical_family(family)
    if predicted is None or gold is None:
        return False
    if family == "svamp":
        p, g = safe_eval.evaluate(predicted), safe_eval.evaluate(gold)
        return p is not None and g is not None and p == g
    return predicted == gold
