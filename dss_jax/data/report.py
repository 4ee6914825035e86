"""How good a teacher cache is: parse failures and teacher label accuracy.

The accuracy is the teacher's label judged against the ground truth as the reference
scores it (`parsers.labels_match`), over every record with a gold label; a record whose
chosen sample did not parse (or is missing) counts as wrong, as in the reference, where
an unparsed completion becomes the label " ".
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from dss_jax.data import parsers
from dss_jax.data.cache import CacheRecord


@dataclasses.dataclass(frozen=True)
class CacheReport:
    records: int  # records in the cache
    samples: int  # teacher samples over all records
    unparsed: int  # records whose judged sample has no rationale or no label (or is missing)
    judged: int  # records with a gold label
    teacher_correct: int  # judged records whose teacher label matches the gold label

    @property
    def teacher_accuracy(self) -> float:
        return self.teacher_correct / self.judged if self.judged else float("nan")

    def lines(self) -> list[str]:
        """`key=value` lines for a command's output; teacher_accuracy comes last."""
        return [
            f"records={self.records}",
            f"samples={self.samples}",
            f"unparsed={self.unparsed}",
            f"judged={self.judged}",
            f"teacher_correct={self.teacher_correct}",
            f"teacher_accuracy={self.teacher_accuracy:.6f}",
        ]


def summarize(records: Iterable[CacheRecord], family: str, sample_index: int = 0) -> CacheReport:
    """Counts over `records`, judging each record's sample number `sample_index`."""
    family = parsers.canonical_family(family)
    n = samples = unparsed = judged = correct = 0
    for record in records:
        n += 1
        samples += len(record.samples)
        sample = record.samples[sample_index] if sample_index < len(record.samples) else None
        if sample is None or not sample.parsed:
            unparsed += 1
        if record.label is None:
            continue
        judged += 1
        if sample is not None and sample.parsed:
            correct += parsers.labels_match(family, sample.label, record.label)
    return CacheReport(n, samples, unparsed, judged, correct)
