"""How segments become the rows a student reads, one format per batch layout.

A *segment* is one (input, target) pair of a paired example with its task id:
LABEL_TASK (`predict: x -> label`) or RATIONALE_TASK (`explain: x -> rationale`). The
packer (packing.py) places segments into rows; a format says how much room a segment
takes and writes the row features (int32, dss_jax.features):

    EncoderDecoderRows (T5)   input on the encoder side, target on the decoder side
    DecoderOnlyRows           one stream: the prompt, then the target, loss on the target

    fmt = row_format("decoder_only", lengths=(96,))
    row = fmt.packed_row([segment, ...])        # {feature: [length]}
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np

from dss_jax.cli import UserError
from dss_jax.features import (
    DECODER_FEATURES,
    DECODER_ONLY_FEATURES,
    ENCODER_FEATURES,
    PACKED_FEATURES,
    UNPACKED_FEATURES,
)

LAYOUTS = ("encoder_decoder", "decoder_only")


class Segment(NamedTuple):
    inputs: np.ndarray  # [input_len] int32
    targets: np.ndarray  # [target_len] int32
    task_id: int  # LABEL_TASK or RATIONALE_TASK


def _shift_right(targets: np.ndarray, bos_id: int) -> np.ndarray:
    shifted = np.empty_like(targets)
    if targets.size:
        shifted[0] = bos_id
        shifted[1:] = targets[:-1]
    return shifted


class EncoderDecoderRows:
    """T5X's EncDecFeatureConverter rows plus `decoder_task_ids`: segment k of a row holds
    encoder and decoder tokens tagged with segment id k (positions restart at 0), so
    cross-attention pairs each target with its own input. `decoder_input_tokens` is the
    target shifted right within its segment, starting with `bos_id`; padding is 0."""

    layout = "encoder_decoder"

    def __init__(self, encoder_length: int, decoder_length: int, bos_id: int = 0):
        self.lengths = (encoder_length, decoder_length)
        self.bos_id = bos_id

    def feature_length(self, name: str) -> int:
        return self.lengths[0] if name.startswith("encoder") else self.lengths[1]

    def features(self, pack: bool) -> tuple[str, ...]:
        return PACKED_FEATURES if pack else UNPACKED_FEATURES

    def sizes(self, segment: Segment) -> tuple[int, int]:
        return len(segment.inputs), len(segment.targets)

    def trim(self, segment: Segment) -> Segment:
        return Segment(
            np.asarray(segment.inputs, np.int32)[: self.lengths[0]],
            np.asarray(segment.targets, np.int32)[: self.lengths[1]],
            segment.task_id,
        )

    def packed_row(self, segments: Sequence[Segment]) -> dict[str, np.ndarray]:
        """One row from segments that fit (the packer guarantees the room)."""
        row = {k: np.zeros(self.feature_length(k), np.int32) for k in ENCODER_FEATURES + DECODER_FEATURES}
        enc, dec = 0, 0
        for k, seg in enumerate(segments, start=1):
            n_in, n_out = len(seg.inputs), len(seg.targets)
            row["encoder_input_tokens"][enc : enc + n_in] = seg.inputs
            row["encoder_segment_ids"][enc : enc + n_in] = k
            row["encoder_positions"][enc : enc + n_in] = np.arange(n_in)
            row["decoder_target_tokens"][dec : dec + n_out] = seg.targets
            row["decoder_input_tokens"][dec : dec + n_out] = _shift_right(seg.targets, self.bos_id)
            row["decoder_loss_weights"][dec : dec + n_out] = 1
            row["decoder_segment_ids"][dec : dec + n_out] = k
            row["decoder_positions"][dec : dec + n_out] = np.arange(n_out)
            row["decoder_task_ids"][dec : dec + n_out] = seg.task_id
            enc += n_in
            dec += n_out
        return row

    def unpacked_row(self, segment: Segment) -> dict[str, np.ndarray]:
        """One segment, padded: the evaluation layout (no segment ids or positions)."""
        packed = self.packed_row([self.trim(segment)])
        return {k: packed[k] for k in UNPACKED_FEATURES}

    def token_counts(self, row: dict[str, np.ndarray]) -> tuple[int, int, int, int]:
        """(real input tokens, input slots, real target tokens, target slots) of a row."""
        weights = row["decoder_loss_weights"]
        tokens = row["encoder_input_tokens"]
        return int(np.count_nonzero(tokens)), tokens.size, int(weights.sum()), weights.size


class DecoderOnlyRows:
    """One stream per row. A segment is the sequence S = inputs + targets (the prompt, as
    the task tokenized it: BOS when the vocabulary has one, "predict: x", EOS; then the
    target and its EOS), laid out as a causal LM reads it:

        decoder_input_tokens      S[:-1]
        decoder_target_tokens     S[1:]
        decoder_loss_weights      1 where the target is a target token (the first one is
                                  predicted from the prompt's last token), 0 on the prompt
        decoder_task_ids          the segment's task on those positions, 0 elsewhere
        decoder_causal_attention  1 on the prompt's positions (T5X's name; read only by a
                                  model whose prompts attend bidirectionally, prefix-LM)
        decoder_segment_ids       k for segment k, 0 on padding
        decoder_positions         0.. within each segment (what RoPE sees)

    so a segment takes len(inputs) + len(targets) - 1 positions. Unpacked rows carry the
    same features (segment id 1): these vocabularies give id 0 to a real token, so
    padding is marked by segment id 0, never by the token value.
    """

    layout = "decoder_only"

    def __init__(self, length: int):
        self.lengths = (length,)

    def feature_length(self, name: str) -> int:
        return self.lengths[0]

    def features(self, pack: bool) -> tuple[str, ...]:
        return DECODER_ONLY_FEATURES

    def sizes(self, segment: Segment) -> tuple[int]:
        return (len(segment.inputs) + len(segment.targets) - 1,)

    def trim(self, segment: Segment) -> Segment:
        """Cut to the row: the prompt first (at most the whole row), then the target."""
        length = self.lengths[0]
        inputs = np.asarray(segment.inputs, np.int32)[:length]
        targets = np.asarray(segment.targets, np.int32)[: length + 1 - len(inputs)]
        return Segment(inputs, targets, segment.task_id)

    def packed_row(self, segments: Sequence[Segment]) -> dict[str, np.ndarray]:
        row = {k: np.zeros(self.lengths[0], np.int32) for k in DECODER_ONLY_FEATURES}
        at = 0
        for k, seg in enumerate(segments, start=1):
            if len(seg.inputs) == 0 or len(seg.targets) == 0:
                raise ValueError("a decoder-only segment needs a prompt and a target (each at least its EOS)")
            sequence = np.concatenate([seg.inputs, seg.targets]).astype(np.int32)
            n = len(sequence) - 1
            prompt = len(seg.inputs)
            target = np.arange(n) >= prompt - 1  # positions whose next token is a target token
            span = slice(at, at + n)
            row["decoder_input_tokens"][span] = sequence[:-1]
            row["decoder_target_tokens"][span] = sequence[1:]
            row["decoder_loss_weights"][span] = target
            row["decoder_task_ids"][span] = np.where(target, seg.task_id, 0)
            row["decoder_causal_attention"][span] = np.arange(n) < prompt
            row["decoder_segment_ids"][span] = k
            row["decoder_positions"][span] = np.arange(n)
            at += n
        return row

    def unpacked_row(self, segment: Segment) -> dict[str, np.ndarray]:
        return self.packed_row([self.trim(segment)])

    def token_counts(self, row: dict[str, np.ndarray]) -> tuple[int, int, int, int]:
        """(prompt tokens, 0, target tokens, row slots): the one stream counts as targets'."""
        real = row["decoder_segment_ids"] > 0
        weights = row["decoder_loss_weights"]
        return int(np.count_nonzero(real & (weights == 0))), 0, int(weights.sum()), weights.size


class RowLengthError(UserError, ValueError):
    """Packed rows set shorter than the longest segment the task feature lengths allow."""


def row_format(layout: str, lengths: Sequence[int], bos_id: int = 0):
    """The rows of a batch layout: `lengths` (encoder, decoder) or (length,)."""
    if layout == "encoder_decoder":
        return EncoderDecoderRows(*lengths, bos_id=bos_id)
    if layout == "decoder_only":
        (length,) = lengths
        return DecoderOnlyRows(length)
    raise ValueError(f"batch layout must be one of {LAYOUTS}, got {layout!r}")


def layout_lengths(
    layout: str,
    task_feature_lengths,
    include_rationale: bool = True,
    pack: bool = True,
    pack_encoder_length: Optional[int] = None,
    pack_decoder_length: Optional[int] = None,
) -> tuple[int, ...]:
    """The row lengths of a layout for the task feature lengths.

    encoder_decoder: (encoder, decoder), the longest segment's, or packed the rows' own
    lengths when given, which must hold the longest input and target. decoder_only: one
    length, the longest inputs + targets - 1; packed, the stream that holds what an
    encoder-decoder row of those lengths holds (pack_encoder_length + pack_decoder_length
    - 1), so one gin file gives both families rows of the same token budget.
    """
    tasks = ("label", "rationale") if include_rationale else ("label",)
    inputs = [task_feature_lengths[f"{t}_inputs"] for t in tasks]
    targets = [task_feature_lengths[f"{t}_targets"] for t in tasks]
    if layout not in LAYOUTS:
        raise ValueError(f"batch layout must be one of {LAYOUTS}, got {layout!r}")
    longest = (max(inputs), max(targets))
    if not pack:
        return longest if layout == "encoder_decoder" else (max(i + t - 1 for i, t in zip(inputs, targets)),)
    rows = (pack_encoder_length or longest[0], pack_decoder_length or longest[1])
    if rows[0] < longest[0] or rows[1] < longest[1]:
        short = [
            f"DssFeatureConverter.pack_{side}_length={row} < {need}"
            for side, row, need in zip(("encoder", "decoder"), rows, longest)
            if row < need
        ]
        raise RowLengthError(
            f"packed rows ({rows[0]} encoder, {rows[1]} decoder tokens) must hold the longest segment "
            f"({longest[0]}, {longest[1]} from the task feature lengths {dict(task_feature_lengths)}): "
            f"{'; '.join(short)}; raise it or shorten TASK_FEATURE_LENGTHS"
        )
    return rows if layout == "encoder_decoder" else (rows[0] + rows[1] - 1,)
