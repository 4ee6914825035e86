"""Output parsers: unit cases per family, and agreement with the reference's parsing
(google-research/distilling-step-by-step, data_utils.py) on the released completions."""

import json
import re

import pytest

from dss_jax.data import parsers
from dss_jax.data.parsers import Parsed, labels_match, parse_completion

NLI_LABELS = ["entailment", "neutral", "contradiction"]


# --------------------------------------------------------------------------------------
# Unit cases
# --------------------------------------------------------------------------------------


def test_svamp_cuts_invented_exemplars_and_splits():
    c = "Luke scored 84 points. 84 / 2 = 42. The answer is (84 / 2).\n\nQ: Tom has 3. The answer is (3 + 1)."
    assert parse_completion("svamp", c) == Parsed("Luke scored 84 points. 84 / 2 = 42.", "(84 / 2)")
    assert parse_completion("svamp", c).ok


def test_svamp_equation_is_greedy_on_one_line():
    p = parse_completion("svamp", "x. The answer is ((5 - 3) * 2) apples.\nmore (text)")
    assert p.label == "((5 - 3) * 2)"


@pytest.mark.parametrize(
    "completion",
    [
        "No answer phrase here at all.",
        "The answer is 42.",  # no parenthesised equation
        "A. The answer is (1. The answer is (2).",  # ambiguous: phrase twice
        "The answer is ((491 - 21",  # truncated equation
    ],
)
def test_svamp_unparsed(completion):
    assert not parse_completion("svamp", completion).ok


def test_cqa():
    c = "Beavers build dams. So the answer is (c) wooded area.\n\nQ: What?\nAnswer Choices:\n(a) x"
    assert parse_completion("cqa", c) == Parsed("Beavers build dams.", "wooded area")
    assert parse_completion("cqa", "R. So the answer is one of these four.\n\n").label is None
    assert parse_completion("cqa", "R. So the answer is (d).").label is None
    assert parse_completion("cqa", "R. So the answer is (a) x or (b) y.").label == "x or"


def test_anli_and_nli_alias():
    c = "The premise says so. So the answer is entailment.\n\nPremise: a\nHypothesis: b\nAnswer: c"
    assert parse_completion("anli1", c) == Parsed("The premise says so.", "entailment")
    assert parse_completion("nli", c) == parse_completion("anli1", c)
    # A label without the final period keeps all its characters.
    assert parse_completion("anli1", "R. So the answer is neutral").label == "neutral"
    assert not parse_completion("anli1", "No phrase.\n\nPremise: x").ok


def test_esnli():
    c = "The choir sings, the church is full of song.\nAnswer: entailment\n\nPremise: x\nHypothesis: y"
    assert parse_completion("esnli", c) == Parsed("The choir sings, the church is full of song.", "entailment")
    assert parse_completion("esnli", "only a rationale") == Parsed("only a rationale", None)


def test_unknown_family_names_known_ones():
    with pytest.raises(ValueError, match=r"unknown dataset family 'gsm8k'.*svamp.*cqa.*anli1.*esnli"):
        parse_completion("gsm8k", "x")
    with pytest.raises(ValueError, match="gsm8k"):
        labels_match("gsm8k", "a", "a")


def test_labels_match():
    assert labels_match("svamp", "(84 / 2)", "( 84.0 / 2.0 )")
    assert labels_match("svamp", "(7 * 36)", "( 252.0 )")
    assert not labels_match("svamp", "(84 / 3)", "( 84.0 / 2.0 )")
    assert not labels_match("svamp", "(some - 8)", "( 8.0 + 6.0 )")
    assert not labels_match("svamp", None, "( 1.0 )")
    assert not labels_match("svamp", "(1 / 0)", "(1 / 0)")  # NaN never equals NaN
    assert labels_match("cqa", "wooded area", "wooded area")
    assert not labels_match("cqa", "Wooded area", "wooded area")
    assert labels_match("nli", "neutral", "neutral")


# --------------------------------------------------------------------------------------
# Agreement with the reference on every released record
# --------------------------------------------------------------------------------------
#
# The oracle below is a restatement, written for this test, of the reference's parsing
# rules (data_utils.py, `_parse_llm_output` of each loader). It returns the reference's
# (rationale, label); the reference's fallback labels " " and "" mean "unparsed".


def reference_rule(family, out):
    if family == "svamp":  # cut at "Q:", right-strip, split on the phrase; greedy "(...)"
        head = out.split("Q:")[0].rstrip()
        parts = head.split("The answer is")
        if len(parts) != 2:
            return " ", " "
        m = re.search(r"\(.*\)", parts[1])
        return parts[0].rstrip(), (m.group(0) if m else " ")
    if family == "cqa":  # as svamp; label = text after the first "(x)" up to the next, no final "."
        head = out.split("Q:")[0].rstrip()
        rationale, label = head.split("So the answer is")  # the reference has no fallback here
        pieces = re.split(r"\(.\)", label)
        if len(pieces) < 2 or not pieces[1].strip():
            return rationale.rstrip(), " "
        label = pieces[1].strip()
        return rationale.rstrip(), label[:-1] if label[-1] == "." else label
    if family == "anli1":  # cut at "Premise:"; label loses its last character
        parts = out.split("Premise:")[0].rstrip().split("So the answer is")
        if len(parts) != 2:
            return "", ""
        return parts[0].rstrip(), parts[1].lstrip()[:-1]
    if family == "esnli":  # rationale before "Answer:"; label after "Answer: " up to "Premise"
        rationale = out.split("Answer:")[0].rstrip()
        parts = out.split("Answer: ")
        return rationale, (parts[1].split("Premise")[0].rstrip() if len(parts) > 1 else " ")
    raise AssertionError(family)


def _load(root, dataset, split):
    with open(root / dataset / f"{dataset}_{split}.json") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    completions, k = [], 0
    while (root / dataset / "llm" / f"{split}_CoT_{k}.json").exists():
        with open(root / dataset / "llm" / f"{split}_CoT_{k}.json") as f:
            completions += json.load(f)
        k += 1
    assert len(rows) == len(completions)
    return rows, completions


def _gold(dataset, row):
    if dataset == "cqa":
        return row["answer"]
    if dataset in ("anli1", "esnli"):
        return NLI_LABELS[row["label"]]
    return row["label"]


# (dataset, split, records, records the reference leaves without a label)
CASES = [
    ("svamp", "train", 800, 11 + 2),
    ("svamp", "test", 200, 2),
    ("cqa", "train", 9741, 3),
    ("cqa", "test", 1221, 0),
    ("anli1", "sample", 64, 0),
    ("esnli", "sample", 64, 0),
]


@pytest.mark.shared_data
@pytest.mark.parametrize("dataset,split,n,n_unlabelled", CASES)
def test_agrees_with_reference_on_every_record(dss_palm_dir, dataset, split, n, n_unlabelled):
    rows, completions = _load(dss_palm_dir, dataset, split)
    assert len(rows) == n
    unparsed = 0
    for i, out in enumerate(completions):
        ref_rationale, ref_label = reference_rule(dataset, out)
        ours = parse_completion(dataset, out)
        if not ref_label.strip():
            assert ours.label is None, (i, out)
            unparsed += 1
        else:
            assert ours.label == ref_label, (i, out)
            assert ours.rationale == ref_rationale.strip(), (i, out)
            assert ours.ok
    assert unparsed == n_unlabelled


# The reference scores SVAMP with Python's eval. On purely arithmetic strings (digits,
# ".", spaces, parentheses, + - * /, no "**" or "//") eval cannot reach a name, so this
# test may use it as the oracle. For the rest, the reference's outcome is pinned below.
_ARITHMETIC = re.compile(r"^[0-9. ()+\-*/]+$")

# Teacher labels that are not plain arithmetic and that the reference nevertheless
# scores as right: Python's `and` returns its right operand. The safe evaluator rejects
# `and`, so these two (train positions 644 and 762) are the only scoring difference.
REFERENCE_ONLY_RIGHT = {("train", 644), ("train", 762)}
REFERENCE_TEACHER_RIGHT = {"train": 588, "test": 148}


@pytest.mark.shared_data
@pytest.mark.parametrize("split", ["train", "test"])
def test_svamp_scoring_agrees_with_reference(dss_palm_dir, split):
    rows, completions = _load(dss_palm_dir, "svamp", split)
    ours_right, differences = 0, set()
    for i, (row, out) in enumerate(zip(rows, completions)):
        gold = row["label"]
        assert _ARITHMETIC.match(gold)
        assert parsers.safe_eval.evaluate(gold) == float(eval(gold, {"__builtins__": {}}))
        label = parse_completion("svamp", out).label
        right = labels_match("svamp", label, gold)
        ours_right += right
        if label is not None and _ARITHMETIC.match(label) and "**" not in label and "//" not in label:
            try:
                ref_value = float(eval(label, {"__builtins__": {}}))
            except (ZeroDivisionError, SyntaxError):  # the reference scores these NaN
                ref_value = float("nan")
            assert right == (ref_value == float(eval(gold, {"__builtins__": {}}))), (i, label)
        elif label is not None and " and " in label:
            if (split, i) in REFERENCE_ONLY_RIGHT:
                differences.add((split, i))
            assert not right
        else:
            assert not right, (i, label)  # names, commas: the reference's eval fails too
    expected = {d for d in REFERENCE_ONLY_RIGHT if d[0] == split}
    assert differences == expected
    assert ours_right == REFERENCE_TEACHER_RIGHT[split] - len(expected)


# --------------------------------------------------------------------------------------
# Adversarial completions: every family's parser is linear in the completion's length
# --------------------------------------------------------------------------------------

MB = 1 << 20


def _mb(piece: str, prefix: str = "", suffix: str = "") -> str:
    return prefix + piece * (MB // len(piece)) + suffix


ADVERSARIAL = {
    "unclosed_parens": _mb("(", "R. The answer is "),
    "unclosed_parens_per_line": _mb("(\n", "R. The answer is "),
    "parens_and_spaces": _mb("( ", "R. The answer is "),
    "close_before_open": _mb(")(", "R. The answer is "),
    "spaces": _mb(" "),
    "digits": _mb("7", "R. The answer is ("),
    "svamp_marker_repeated": _mb("The answer is "),
    "cqa_marker_repeated": _mb("So the answer is "),
    "cut_marker_repeated": _mb("Q:"),
    "choice_markers": _mb("(a)", "R. So the answer is "),
    "unclosed_choice_markers": _mb("(a", "R. So the answer is "),
    "esnli_marker_repeated": _mb("Answer: "),
    "esnli_premise_repeated": _mb("Premise", "R.\nAnswer: "),
    "huge_equation": _mb("1 + ", "R. The answer is (", "1)."),
}


@pytest.mark.parametrize("family", parsers.FAMILIES)
@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_megabyte_completion_parses_in_well_under_a_second(family, name):
    import time

    completion = ADVERSARIAL[name]
    start = time.perf_counter()
    parsed = parse_completion(family, completion)
    labels_match(family, parsed.label, "( 1.0 + 1.0 )")  # the label is judged too, also bounded
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{family} on {name}: {elapsed:.2f}s"


def _reference_svamp_label(completion):
    """The regex the svamp label is specified by (quadratic, so only for short texts)."""
    head = completion.split("Q:", 1)[0]
    parts = head.split("The answer is")
    if len(parts) != 2:
        return None
    match = re.search(r"\([^\n]*\)", parts[1])
    return match.group(0) if match else None


def _reference_cqa_label(completion):
    parts = completion.split("Q:", 1)[0].split("So the answer is")
    if len(parts) != 2:
        return None
    pieces = re.split(r"\([^\n]\)", parts[1])
    if len(pieces) < 2:
        return None
    label = pieces[1].strip()
    return (label[:-1] if label.endswith(".") else label).strip() or None


def test_linear_parsers_find_what_the_regexes_find():
    import random

    rng = random.Random(0)
    for _ in range(5000):
        tail = "".join(rng.choice("()\nxa. ") for _ in range(rng.randint(0, 14)))
        svamp = "R. The answer is " + tail
        assert parse_completion("svamp", svamp).label == _reference_svamp_label(svamp), repr(svamp)
        cqa = "R. So the answer is " + tail
        assert parse_completion("cqa", cqa).label == _reference_cqa_label(cqa), repr(cqa)
