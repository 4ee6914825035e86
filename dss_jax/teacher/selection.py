"""Self-consistency voting and sample filters, applied to one example's teacher samples.

Order of operations (each step optional, see `select_samples`):
  1. drop unparsable samples (no rationale or no label)    keep in {parsed, correct}, or vote
  2. majority vote over the parsed labels; keep only the samples of the winning label
     (labels are equal when `labels_match` says so: by value for svamp, so "(3 + 4)" and
     "(4 + 3)" vote together); ties go to the label that appeared first   --vote
     and, with `min_vote_share`, keep nothing when the winner has fewer than that share
     of the parsed samples (an uncertain teacher: on a student annotating its own
     unlabeled data, agreement predicts correctness)           --vote --min_vote_share
  3. keep only samples whose label matches the ground truth, when it is known  keep=correct
`keep=all` without voting keeps every sample, unparsed ones included, as the raw record.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

from dss_jax.data.cache import TeacherSample

KEEP_CHOICES = ("all", "parsed", "correct")
LabelsMatch = Callable[[str, str], bool]  # (label_a, label_b) -> equal?


@dataclasses.dataclass(frozen=True)
class Vote:
    label: str  # the first-seen spelling of the winning label
    count: int  # samples that voted for it
    total: int  # parsed samples that voted


@dataclasses.dataclass(frozen=True)
class Selection:
    kept: tuple[TeacherSample, ...]
    num_samples: int
    num_parsed: int
    vote: Optional[Vote]
    # Samples whose label matches the gold label; None when the gold label is unknown.
    num_correct: Optional[int]
    # Whether the voted label matches the gold label; None without a vote or a gold label.
    vote_correct: Optional[bool]
    dropped_unparsed: int
    dropped_minority: int  # parsed samples that lost the vote
    dropped_wrong: int  # samples removed by keep=correct
    dropped_uncertain: int = 0  # winning samples removed because the vote was below min_vote_share

    @property
    def dropped(self) -> int:
        return self.num_samples - len(self.kept)


def majority_vote(labels: Sequence[str], labels_match: LabelsMatch) -> Optional[Vote]:
    """The most frequent label up to `labels_match`; ties broken by first appearance."""
    groups: list[list] = []  # [representative, count], in order of first appearance
    for label in labels:
        for group in groups:
            if labels_match(label, group[0]):
                group[1] += 1
                break
        else:
            groups.append([label, 1])
    if not groups:
        return None
    best = max(groups, key=lambda g: g[1])  # max() keeps the first of equal counts
    return Vote(label=best[0], count=best[1], total=len(labels))


def select_samples(
    samples: Sequence[TeacherSample],
    gold: Optional[str],
    labels_match: LabelsMatch,
    keep: str = "all",
    vote: bool = False,
    min_vote_share: float = 0.0,
) -> Selection:
    if keep not in KEEP_CHOICES:
        raise ValueError(f"keep must be one of {KEEP_CHOICES}, got {keep!r}")
    if not 0.0 <= min_vote_share <= 1.0:
        raise ValueError(f"min_vote_share must be in [0, 1], got {min_vote_share}")
    parsed = [s for s in samples if s.parsed]
    num_correct = None
    if gold is not None:
        num_correct = sum(1 for s in parsed if labels_match(s.label, gold))

    candidates = list(samples) if keep == "all" and not vote else parsed
    dropped_unparsed = len(samples) - len(candidates)

    winner = None
    dropped_minority = 0
    if vote:
        winner = majority_vote([s.label for s in parsed], labels_match)
        if winner is not None:
            before = len(candidates)
            candidates = [s for s in candidates if labels_match(s.label, winner.label)]
            dropped_minority = before - len(candidates)

    dropped_uncertain = 0
    if vote and winner is not None and winner.count < min_vote_share * winner.total:
        dropped_uncertain, candidates = len(candidates), []

    dropped_wrong = 0
    if keep == "correct" and gold is not None:
        before = len(candidates)
        candidates = [s for s in candidates if s.parsed and labels_match(s.label, gold)]
        dropped_wrong = before - len(candidates)

    vote_correct = None
    if vote and gold is not None:
        vote_correct = winner is not None and labels_match(winner.label, gold)
    return Selection(
        kept=tuple(candidates),
        num_samples=len(samples),
        num_parsed=len(parsed),
        vote=winner,
        num_correct=num_correct,
        vote_correct=vote_correct,
        dropped_unparsed=dropped_unparsed,
        dropped_minority=dropped_minority,
        dropped_wrong=dropped_wrong,
        dropped_uncertain=dropped_uncertain,
    )
