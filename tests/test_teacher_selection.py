"""Self-consistency voting and the keep filters on scripted samples."""

import functools

import pytest

from dss_jax.data import parsers
from dss_jax.data.cache import TeacherSample
from dss_jax.teacher.selection import majority_vote, select_samples

svamp_match = functools.partial(parsers.labels_match, "svamp")
cqa_match = functools.partial(parsers.labels_match, "cqa")


def s(label, rationale="because", tag=""):
    return TeacherSample(rationale=None if label is None else rationale, label=label, completion=tag)


def tags(selection):
    return [x.completion for x in selection.kept]


def test_vote_groups_equations_by_value():
    # (3 + 4), (4 + 3) and ( 7.0 ) are one answer by value; (3 * 4) has two votes only.
    vote = majority_vote(["(3 * 4)", "(3 + 4)", "(4 + 3)", "(3 * 4)", "( 7.0 )"], svamp_match)
    assert vote.label == "(3 + 4)" and vote.count == 3 and vote.total == 5


def test_vote_ties_go_to_first_seen_label_and_text_families_compare_text():
    assert majority_vote(["bird", "cat", "cat", "bird"], cqa_match).label == "bird"
    assert majority_vote(["Bird", "bird", "cat"], cqa_match).label == "Bird"  # text: no case folding
    assert majority_vote([], cqa_match) is None


SAMPLES = [
    s("(2 + 5)", tag="right-a"),
    s(None, tag="unparsed"),
    s("(2 * 5)", tag="wrong"),
    s("(5 + 2)", tag="right-b"),
    TeacherSample(rationale=None, label="(2 + 5)", completion="label-only"),  # no rationale: unparsed
]
GOLD = "( 2.0 + 5.0 )"


@pytest.mark.parametrize(
    "keep, vote, gold, expected",
    [
        ("all", False, GOLD, ["right-a", "unparsed", "wrong", "right-b", "label-only"]),
        ("parsed", False, GOLD, ["right-a", "wrong", "right-b"]),
        ("correct", False, GOLD, ["right-a", "right-b"]),
        ("correct", False, None, ["right-a", "wrong", "right-b"]),  # gold unknown: only parsing filters
        ("all", True, GOLD, ["right-a", "right-b"]),  # the winning label's rationales
        ("parsed", True, None, ["right-a", "right-b"]),
        ("correct", True, GOLD, ["right-a", "right-b"]),
    ],
)
def test_kept_sets(keep, vote, gold, expected):
    sel = select_samples(SAMPLES, gold, svamp_match, keep=keep, vote=vote)
    assert tags(sel) == expected
    assert sel.num_samples == 5 and sel.num_parsed == 3
    assert sel.dropped == 5 - len(expected)
    assert sel.dropped == sel.dropped_unparsed + sel.dropped_minority + sel.dropped_wrong
    assert sel.num_correct == (2 if gold else None)


def test_vote_that_disagrees_with_gold_keeps_nothing_under_keep_correct():
    samples = [s("(1 + 1)", tag="x"), s("(2 * 1)", tag="y"), s("(3 + 0)", tag="gold")]
    sel = select_samples(samples, "(3)", svamp_match, keep="correct", vote=True)
    assert sel.vote.label == "(1 + 1)" and sel.vote.count == 2
    assert sel.kept == () and sel.vote_correct is False
    assert (sel.dropped_minority, sel.dropped_wrong) == (1, 2)

    kept_without_gold_filter = select_samples(samples, "(3)", svamp_match, keep="parsed", vote=True)
    assert tags(kept_without_gold_filter) == ["x", "y"]


def test_all_unparsed():
    sel = select_samples([s(None), s(None)], "cat", cqa_match, keep="parsed", vote=True)
    assert sel.kept == () and sel.vote is None and sel.vote_correct is False and sel.num_correct == 0
    assert sel.dropped_unparsed == 2


def test_bad_keep_value():
    with pytest.raises(ValueError, match="keep must be one of"):
        select_samples([], None, cqa_match, keep="best")


@pytest.mark.parametrize(
    "share, expected", [(0.0, ["right-a", "right-b"]), (2 / 3, ["right-a", "right-b"]), (0.7, []), (1.0, [])]
)
def test_min_vote_share_keeps_only_confident_votes(share, expected):
    # 2 of the 3 parsed samples agree (by value): a share of 0.67 passes, 0.7 does not.
    sel = select_samples(SAMPLES, None, svamp_match, keep="parsed", vote=True, min_vote_share=share)
    assert tags(sel) == expected
    assert sel.vote.count == 2 and sel.vote.total == 3  # the vote is still reported
    assert sel.dropped_uncertain == (2 if not expected else 0)
    assert sel.dropped == sel.dropped_unparsed + sel.dropped_minority + sel.dropped_wrong + sel.dropped_uncertain


def test_min_vote_share_needs_a_vote_and_a_fraction():
    from dss_jax.teacher.pipeline import AnnotateConfig
    from dss_jax.teacher.student_backend import STUDENT_TEMPLATE

    with pytest.raises(ValueError, match="needs vote"):
        AnnotateConfig(template=STUDENT_TEMPLATE, teacher="t", min_vote_share=0.5)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        select_samples(SAMPLES, None, svamp_match, vote=True, min_vote_share=1.5)
