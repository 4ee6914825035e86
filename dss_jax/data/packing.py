"""Packing label and rationale segments into fixed-length rows (numpy, no TensorFlow).

A *segment* is one (encoder input, decoder target) pair with a task id: 1 for the label
task (`predict:`), 2 for the rationale task (`explain:`). Packing places several
segments side by side in one row of `encoder_length` encoder and `decoder_length`
decoder tokens; segment k of a row occupies encoder and decoder positions tagged with
segment id k, so attention masks built from segment ids keep segments apart and
cross-attention pairs each decoder segment with its own encoder segment.

The packer is first-fit over a bounded window of open rows: a segment goes into the
first open row where both its parts fit; when none fits, a new row is opened, and when
the window is full the fullest open row is emitted first. It is deterministic: the same
segments in the same order give the same rows.

Row features (int32) follow T5X's EncDecFeatureConverter, plus `decoder_task_ids`:

    encoder_input_tokens, encoder_segment_ids, encoder_positions      [encoder_length]
    decoder_target_tokens, decoder_input_tokens, decoder_loss_weights,
    decoder_segment_ids, decoder_positions, decoder_task_ids          [decoder_length]

`decoder_input_tokens` is the target shifted right by one within each segment, each
segment starting with `bos_id` (0). Padding is 0 everywhere.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Mapping, NamedTuple, Optional

import numpy as np

from dss_jax.features import (
    DECODER_FEATURES,
    ENCODER_FEATURES,
    LABEL_TASK,
    PACKED_FEATURES,
    PAIRED_FEATURES,
    RATIONALE_TASK,
    UNPACKED_FEATURES,
)


class Segment(NamedTuple):
    inputs: np.ndarray  # [input_len] int32
    targets: np.ndarray  # [target_len] int32
    task_id: int  # LABEL_TASK or RATIONALE_TASK


def paired_segments(example: dict, include_rationale: bool = True) -> list[Segment]:
    """The label segment and (unless excluded) the rationale segment of a paired example."""
    segments = [Segment(example["label_inputs"], example["label_targets"], LABEL_TASK)]
    if include_rationale:
        segments.append(Segment(example["rationale_inputs"], example["rationale_targets"], RATIONALE_TASK))
    return segments


@dataclasses.dataclass
class PackingStats:
    """Token counts over the rows produced so far; efficiency = real / total tokens."""

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

    def record(self, row: dict[str, np.ndarray]) -> None:
        self.rows += 1
        weights = row["decoder_loss_weights"]
        self.encoder_real += int(np.count_nonzero(row["encoder_input_tokens"]))
        self.decoder_real += int(weights.sum())
        self.encoder_total += row["encoder_input_tokens"].size
        self.decoder_total += weights.size
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


def _trim(segment: Segment, encoder_length: int, decoder_length: int) -> Segment:
    return Segment(
        np.asarray(segment.inputs, np.int32)[:encoder_length],
        np.asarray(segment.targets, np.int32)[:decoder_length],
        segment.task_id,
    )


def _shift_right(targets: np.ndarray, bos_id: int) -> np.ndarray:
    shifted = np.empty_like(targets)
    if targets.size:
        shifted[0] = bos_id
        shifted[1:] = targets[:-1]
    return shifted


def build_packed_row(
    segments: list[Segment], encoder_length: int, decoder_length: int, bos_id: int = 0
) -> dict[str, np.ndarray]:
    """One row from segments that fit (the caller guarantees the lengths)."""
    row = {k: np.zeros(encoder_length, np.int32) for k in ENCODER_FEATURES}
    row.update({k: np.zeros(decoder_length, np.int32) for k in DECODER_FEATURES})
    enc, dec = 0, 0
    for k, seg in enumerate(segments, start=1):
        n_in, n_out = len(seg.inputs), len(seg.targets)
        row["encoder_input_tokens"][enc : enc + n_in] = seg.inputs
        row["encoder_segment_ids"][enc : enc + n_in] = k
        row["encoder_positions"][enc : enc + n_in] = np.arange(n_in)
        row["decoder_target_tokens"][dec : dec + n_out] = seg.targets
        row["decoder_input_tokens"][dec : dec + n_out] = _shift_right(seg.targets, bos_id)
        row["decoder_loss_weights"][dec : dec + n_out] = 1
        row["decoder_segment_ids"][dec : dec + n_out] = k
        row["decoder_positions"][dec : dec + n_out] = np.arange(n_out)
        row["decoder_task_ids"][dec : dec + n_out] = seg.task_id
        enc += n_in
        dec += n_out
    return row


def build_unpacked_row(
    segment: Segment, encoder_length: int, decoder_length: int, bos_id: int = 0
) -> dict[str, np.ndarray]:
    """One segment per row, padded: the evaluation layout (no segment ids or positions)."""
    packed = build_packed_row([segment], encoder_length, decoder_length, bos_id)
    return {k: packed[k] for k in UNPACKED_FEATURES}


class _OpenRow:
    __slots__ = ("segments", "encoder_free", "decoder_free")

    def __init__(self, encoder_length: int, decoder_length: int):
        self.segments: list[Segment] = []
        self.encoder_free = encoder_length
        self.decoder_free = decoder_length

    def fits(self, seg: Segment) -> bool:
        return len(seg.inputs) <= self.encoder_free and len(seg.targets) <= self.decoder_free

    def add(self, seg: Segment) -> None:
        self.segments.append(seg)
        self.encoder_free -= len(seg.inputs)
        self.decoder_free -= len(seg.targets)


class FirstFitPacker:
    """Streams segments into packed rows; see the module docstring for the policy."""

    def __init__(self, encoder_length: int, decoder_length: int, max_open_rows: int = 16, bos_id: int = 0):
        if encoder_length <= 0 or decoder_length <= 0 or max_open_rows <= 0:
            raise ValueError("encoder_length, decoder_length and max_open_rows must be positive")
        self.encoder_length = encoder_length
        self.decoder_length = decoder_length
        self.max_open_rows = max_open_rows
        self.bos_id = bos_id
        self._open: list[_OpenRow] = []

    def _emit(self, row: _OpenRow) -> dict[str, np.ndarray]:
        return build_packed_row(row.segments, self.encoder_length, self.decoder_length, self.bos_id)

    def add(self, segment: Segment) -> list[dict[str, np.ndarray]]:
        """Places one segment (trimmed to the row lengths); returns rows now complete."""
        seg = _trim(segment, self.encoder_length, self.decoder_length)
        for row in self._open:
            if row.fits(seg):
                row.add(seg)
                return []
        done = []
        if len(self._open) == self.max_open_rows:
            fullest = min(
                range(len(self._open)),
                key=lambda i: (
                    self._open[i].encoder_free / self.encoder_length + self._open[i].decoder_free / self.decoder_length
                ),
            )
            done.append(self._emit(self._open.pop(fullest)))
        row = _OpenRow(self.encoder_length, self.decoder_length)
        row.add(seg)
        self._open.append(row)
        return done

    def flush(self) -> list[dict[str, np.ndarray]]:
        """The remaining open rows, in the order they were opened."""
        done = [self._emit(row) for row in self._open]
        self._open = []
        return done


def pack_examples(
    examples: Iterable[dict],
    encoder_length: int,
    decoder_length: int,
    include_rationale: bool = True,
    max_open_rows: int = 16,
    bos_id: int = 0,
    stats: PackingStats | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Packed rows from paired examples (dicts of token arrays)."""
    packer = FirstFitPacker(encoder_length, decoder_length, max_open_rows, bos_id)
    for example in examples:
        for segment in paired_segments(example, include_rationale):
            if stats is not None:
                stats.segments += 1
            for row in packer.add(segment):
                if stats is not None:
                    stats.record(row)
                yield row
    for row in packer.flush():
        if stats is not None:
            stats.record(row)
        yield row


def pack_group(
    examples: list[dict],
    encoder_length: int,
    decoder_length: int,
    include_rationale: bool = True,
    bos_id: int = 0,
) -> list[dict[str, np.ndarray]]:
    """All segments of `examples` packed first fit over as many rows as they need (every
    row stays open, so a group packs as densely as first fit can)."""
    segments = sum(len(paired_segments(e, include_rationale)) for e in examples)
    return list(
        pack_examples(
            examples, encoder_length, decoder_length, include_rationale, max_open_rows=max(segments, 1), bos_id=bos_id
        )
    )


def pad_rows(
    rows: list[dict[str, np.ndarray]], count: int, encoder_length: int, decoder_length: int
) -> dict[str, np.ndarray]:
    """Packed rows stacked into a [count, length] batch, the rows after them empty (no
    tokens, no loss weight, segment id 0)."""
    if len(rows) > count:
        raise ValueError(f"{len(rows)} rows do not fit a batch of {count}")
    out = {
        k: np.zeros((count, encoder_length if k.startswith("encoder") else decoder_length), np.int32)
        for k in PACKED_FEATURES
    }
    for i, row in enumerate(rows):
        for k in PACKED_FEATURES:
            out[k][i] = row[k]
    return out


def pad_examples(
    examples: Iterable[dict],
    encoder_length: int,
    decoder_length: int,
    include_rationale: bool = True,
    bos_id: int = 0,
    stats: PackingStats | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Unpacked rows: the label segment, then the rationale segment, of each example."""
    for example in examples:
        for segment in paired_segments(example, include_rationale):
            row = build_unpacked_row(
                _trim(segment, encoder_length, decoder_length), encoder_length, decoder_length, bos_id
            )
            if stats is not None:
                stats.segments += 1
                stats.record(row)
            yield row


def segment_lengths(task_feature_lengths: Mapping[str, int], include_rationale: bool = True) -> tuple[int, int]:
    """(encoder, decoder) length of the longest segment the task feature lengths allow."""
    if include_rationale:
        return (
            max(task_feature_lengths["label_inputs"], task_feature_lengths["rationale_inputs"]),
            max(task_feature_lengths["label_targets"], task_feature_lengths["rationale_targets"]),
        )
    return task_feature_lengths["label_inputs"], task_feature_lengths["label_targets"]


def row_lengths(
    task_feature_lengths: Mapping[str, int],
    pack: bool = True,
    include_rationale: bool = True,
    pack_encoder_length: Optional[int] = None,
    pack_decoder_length: Optional[int] = None,
) -> tuple[int, int]:
    """(encoder, decoder) row lengths: the longest segment's, or the packed rows' own
    lengths when given (which must hold the longest segment; ignored when not packing)."""
    encoder_length, decoder_length = segment_lengths(task_feature_lengths, include_rationale)
    if not pack:
        return encoder_length, decoder_length
    rows = (pack_encoder_length or encoder_length, pack_decoder_length or decoder_length)
    if rows[0] < encoder_length or rows[1] < decoder_length:
        raise ValueError(
            f"packed rows ({rows[0]} encoder, {rows[1]} decoder tokens) must hold the longest segment "
            f"({encoder_length}, {decoder_length} from the task feature lengths {dict(task_feature_lengths)})"
        )
    return rows


def convert_numpy(
    examples: Iterable[dict],
    task_feature_lengths: Mapping[str, int],
    pack: bool = True,
    rationale_weight: float = 1.0,
    max_open_rows: int = 16,
    stats: PackingStats | None = None,
    pack_encoder_length: Optional[int] = None,
    pack_decoder_length: Optional[int] = None,
) -> dict[str, np.ndarray]:
    """`DssFeatureConverter`'s rows for in-memory tokenized examples, stacked: [rows, length]
    per feature. The same rows as the converter gives through tf.data, without TensorFlow
    (for tests, benchmarks and numpy-fed training loops)."""
    if rationale_weight < 0:
        raise ValueError(f"rationale_weight must be >= 0, got {rationale_weight}")
    include_rationale = rationale_weight > 0
    encoder_length, decoder_length = row_lengths(
        task_feature_lengths, pack, include_rationale, pack_encoder_length, pack_decoder_length
    )
    trimmed = ({k: np.asarray(ex[k], np.int32)[: task_feature_lengths[k]] for k in PAIRED_FEATURES} for ex in examples)
    if pack:
        rows = list(pack_examples(trimmed, encoder_length, decoder_length, include_rationale, max_open_rows, 0, stats))
    else:
        rows = list(pad_examples(trimmed, encoder_length, decoder_length, include_rationale, 0, stats))
    features = PACKED_FEATURES if pack else UNPACKED_FEATURES
    if not rows:
        return {
            k: np.zeros((0, encoder_length if k.startswith("encoder") else decoder_length), np.int32) for k in features
        }
    return {k: np.stack([r[k] for r in rows]) for k in features}
