"""Packing label and rationale segments into fixed-length rows (numpy, no TensorFlow).

Packing places several segments (row_formats.Segment: an input, a target, a task id)
side by side in one row; the row format (row_formats.py: encoder-decoder or decoder-only)
says how much room each takes and writes the features, with segment ids so that masks
keep segments apart and positions that restart in each segment.

The packer is first-fit over a bounded window of open rows: a segment goes into the
first open row where it fits; when none fits, a new row is opened, and when the window
is full the fullest open row is emitted first. It is deterministic: the same segments in
the same order give the same rows.

    fmt = row_formats.row_format("encoder_decoder", (512, 128))
    rows = list(pack_examples(examples, fmt))          # paired examples -> packed rows
    batch = convert_numpy(examples, lengths, layout="decoder_only")   # stacked [rows, len]
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Mapping, Optional

import numpy as np

from dss_jax.data.row_formats import Segment, layout_lengths, row_format
from dss_jax.features import LABEL_TASK, PAIRED_FEATURES, RATIONALE_TASK


def paired_segments(example: dict, include_rationale: bool = True) -> list[Segment]:
    """The label segment and (unless excluded) the rationale segment of a paired example."""
    segments = [Segment(example["label_inputs"], example["label_targets"], LABEL_TASK)]
    if include_rationale:
        segments.append(Segment(example["rationale_inputs"], example["rationale_targets"], RATIONALE_TASK))
    return segments


@dataclasses.dataclass
class PackingStats:
    """Token counts over the rows produced so far; efficiency = real / total tokens.
    Decoder-only rows are one stream, counted on the decoder side (prompt and target)."""

    rows: int = 0
    segments: int = 0
    encoder_real: int = 0
    decoder_real: int = 0
    encoder_total: int = 0
    decoder_total: int = 0
    label_target_tokens: int = 0
    rationale_target_tokens: int = 0

    @property
    def encoder_efficiency(self) -> float:
        return self.encoder_real / self.encoder_total if self.encoder_total else 0.0

    @property
    def decoder_efficiency(self) -> float:
        return self.decoder_real / self.decoder_total if self.decoder_total else 0.0

    @property
    def efficiency(self) -> float:
        """Real tokens / all tokens, encoder and decoder together."""
        total = self.encoder_total + self.decoder_total
        return (self.encoder_real + self.decoder_real) / total if total else 0.0

    def record(self, row: dict[str, np.ndarray], fmt) -> None:
        self.rows += 1
        input_real, input_total, target_real, target_total = fmt.token_counts(row)
        if fmt.layout == "decoder_only":
            input_real, target_real = 0, input_real + target_real
        self.encoder_real += input_real
        self.encoder_total += input_total
        self.decoder_real += target_real
        self.decoder_total += target_total
        task = row["decoder_task_ids"]
        self.label_target_tokens += int(np.count_nonzero(task == LABEL_TASK))
        self.rationale_target_tokens += int(np.count_nonzero(task == RATIONALE_TASK))

    def as_dict(self) -> dict[str, float]:
        out = dataclasses.asdict(self)
        out.update(
            encoder_efficiency=self.encoder_efficiency,
            decoder_efficiency=self.decoder_efficiency,
            efficiency=self.efficiency,
        )
        return out


class _OpenRow:
    __slots__ = ("segments", "free")

    def __init__(self, lengths: tuple[int, ...]):
        self.segments: list[Segment] = []
        self.free = list(lengths)  # room left on each side of the row

    def fits(self, sizes: tuple[int, ...]) -> bool:
        return all(n <= free for n, free in zip(sizes, self.free))

    def add(self, seg: Segment, sizes: tuple[int, ...]) -> None:
        self.segments.append(seg)
        self.free = [free - n for free, n in zip(self.free, sizes)]


class FirstFitPacker:
    """Streams segments into packed rows of a row format; see the module docstring."""

    def __init__(self, fmt, max_open_rows: int = 16):
        if min(fmt.lengths) <= 0 or max_open_rows <= 0:
            raise ValueError("row lengths and max_open_rows must be positive")
        self.fmt = fmt
        self.max_open_rows = max_open_rows
        self._open: list[_OpenRow] = []

    def _emit(self, row: _OpenRow) -> dict[str, np.ndarray]:
        return self.fmt.packed_row(row.segments)

    def add(self, segment: Segment) -> list[dict[str, np.ndarray]]:
        """Places one segment (trimmed to the row lengths); returns rows now complete."""
        seg = self.fmt.trim(segment)
        sizes = self.fmt.sizes(seg)
        for row in self._open:
            if row.fits(sizes):
                row.add(seg, sizes)
                return []
        done = []
        lengths = self.fmt.lengths
        if len(self._open) == self.max_open_rows:
            fullest = min(
                range(len(self._open)),
                key=lambda i: sum(free / n for free, n in zip(self._open[i].free, lengths)),
            )
            done.append(self._emit(self._open.pop(fullest)))
        row = _OpenRow(lengths)
        row.add(seg, sizes)
        self._open.append(row)
        return done

    def flush(self) -> list[dict[str, np.ndarray]]:
        """The remaining open rows, in the order they were opened."""
        done = [self._emit(row) for row in self._open]
        self._open = []
        return done


def pack_examples(
    examples: Iterable[dict],
    fmt,
    include_rationale: bool = True,
    max_open_rows: int = 16,
    stats: PackingStats | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Packed rows (of row format `fmt`) from paired examples (dicts of token arrays)."""
    packer = FirstFitPacker(fmt, max_open_rows)
    for example in examples:
        for segment in paired_segments(example, include_rationale):
            if stats is not None:
                stats.segments += 1
            for row in packer.add(segment):
                if stats is not None:
                    stats.record(row, fmt)
                yield row
    for row in packer.flush():
        if stats is not None:
            stats.record(row, fmt)
        yield row


def pack_group(examples: list[dict], fmt, include_rationale: bool = True) -> list[dict[str, np.ndarray]]:
    """All segments of `examples` packed first fit over as many rows as they need (every
    row stays open, so a group packs as densely as first fit can)."""
    segments = sum(len(paired_segments(e, include_rationale)) for e in examples)
    return list(pack_examples(examples, fmt, include_rationale, max_open_rows=max(segments, 1)))


def pad_rows(rows: list[dict[str, np.ndarray]], count: int, fmt) -> dict[str, np.ndarray]:
    """Packed rows stacked into a [count, length] batch, the rows after them empty (no
    tokens, no loss weight, segment id 0)."""
    if len(rows) > count:
        raise ValueError(f"{len(rows)} rows do not fit a batch of {count}")
    features = fmt.features(pack=True)
    out = {k: np.zeros((count, fmt.feature_length(k)), np.int32) for k in features}
    for i, row in enumerate(rows):
        for k in features:
            out[k][i] = row[k]
    return out


def pad_examples(
    examples: Iterable[dict], fmt, include_rationale: bool = True, stats: PackingStats | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Unpacked rows: the label segment, then the rationale segment, of each example."""
    for example in examples:
        for segment in paired_segments(example, include_rationale):
            row = fmt.unpacked_row(segment)
            if stats is not None:
                stats.segments += 1
                stats.record(row, fmt)
            yield row


def convert_numpy(
    examples: Iterable[dict],
    task_feature_lengths: Mapping[str, int],
    pack: bool = True,
    rationale_weight: float = 1.0,
    max_open_rows: int = 16,
    stats: PackingStats | None = None,
    pack_encoder_length: Optional[int] = None,
    pack_decoder_length: Optional[int] = None,
    layout: str = "encoder_decoder",
) -> dict[str, np.ndarray]:
    """`DssFeatureConverter`'s rows for in-memory tokenized examples, stacked: [rows, length]
    per feature. The same rows as the converter gives through tf.data, without TensorFlow
    (for tests, benchmarks and numpy-fed training loops)."""
    if rationale_weight < 0:
        raise ValueError(f"rationale_weight must be >= 0, got {rationale_weight}")
    include_rationale = rationale_weight > 0
    lengths = layout_lengths(
        layout, task_feature_lengths, include_rationale, pack, pack_encoder_length, pack_decoder_length
    )
    fmt = row_format(layout, lengths)
    trimmed = ({k: np.asarray(ex[k], np.int32)[: task_feature_lengths[k]] for k in PAIRED_FEATURES} for ex in examples)
    if pack:
        rows = list(pack_examples(trimmed, fmt, include_rationale, max_open_rows, stats))
    else:
        rows = list(pad_examples(trimmed, fmt, include_rationale, stats))
    features = fmt.features(pack)
    if not rows:
        return {k: np.zeros((0, fmt.feature_length(k)), np.int32) for k in features}
    return {k: np.stack([r[k] for r in rows]) for k in features}
