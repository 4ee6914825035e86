"""The DSS feature converter: paired examples -> the model's (packed) features.

Task features (tokenized, each ending in EOS):

    label_inputs        "predict: <input>"      label_targets       the label
    rationale_inputs    "explain: <input>"      rationale_targets   the rationale

Model features, in the student's batch layout (`layout`, which the pipeline takes from
the model; see `dss_jax.data.row_formats`): encoder-decoder rows have T5X's
EncDecFeatureConverter names plus `decoder_task_ids` (1 label token, 2 rationale token, 0
padding), of lengths encoder max(label_inputs, rationale_inputs) and decoder
max(label_targets, rationale_targets), unless packed rows are given their own lengths
(`pack_encoder_length`, `pack_decoder_length`: inputs are several times longer than
targets, so rows shaped like one segment leave the decoder mostly padding). Decoder-only
rows are one stream of the longest inputs + targets - 1; packed, of the two pack lengths
added (minus 1): the same token budget from the same gin file. With
`rationale_weight=0` the rationale segments are left out and only the label lengths count.

Packing runs in numpy (`packing.FirstFitPacker`) on the tokenized stream, because the
rows must hold segments of two kinds with one task id per target token; `stats` counts
the real and total tokens of the rows produced so far (padding efficiency).
"""

from __future__ import annotations

from typing import Iterator, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

import gin
from dss_jax.data import packing, row_formats
from dss_jax.data.packing import convert_numpy  # noqa: F401  (re-exported: the numpy path)
from dss_jax.features import DECODER_ONLY_FEATURES, PAIRED_FEATURES, UNPACKED_FEATURES

_INT = seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
_BLOCK = 128  # examples / rows per crossing between tf.data and numpy


@gin.configurable(denylist=["layout"])
class DssFeatureConverter(seqio.FeatureConverter):
    """Packs label and rationale segments into shared rows (or pads one per row)."""

    TASK_FEATURES = {name: _INT for name in PAIRED_FEATURES}
    MODEL_FEATURES = {name: _INT for name in UNPACKED_FEATURES}
    PACKING_FEATURE_DTYPES = {
        "encoder_segment_ids": tf.int32,
        "decoder_segment_ids": tf.int32,
        "encoder_positions": tf.int32,
        "decoder_positions": tf.int32,
    }

    def __init__(
        self,
        pack: bool = True,
        rationale_weight: float = 1.0,
        max_open_rows: int = 16,
        pack_encoder_length: Optional[int] = None,
        pack_decoder_length: Optional[int] = None,
        apply_length_check: bool = True,
        bos_id: int = 0,
        layout: str = "encoder_decoder",
    ):
        """
        Args:
          pack: pack segments into shared rows (training) or one segment per row (eval).
          rationale_weight: λ of the DSS loss; 0 leaves the rationale segments out.
          max_open_rows: the first-fit window (more rows: denser packing, more memory).
          pack_encoder_length / pack_decoder_length: packed row lengths when they should
            differ from the segment lengths (inputs are usually several times longer than
            targets, so rows shaped like one segment waste decoder room); at least the
            longest segment. Ignored when not packing.
          apply_length_check: seqio's length assertions on the input and output.
          bos_id: the decoder start token (encoder-decoder rows).
          layout: the student's batch layout (`StudentModel.batch_layout`).
        """
        super().__init__(pack=pack, apply_length_check=apply_length_check, bos_id=bos_id)
        if rationale_weight < 0:
            raise ValueError(f"rationale_weight must be >= 0, got {rationale_weight}")
        self.rationale_weight = rationale_weight
        self.max_open_rows = max_open_rows
        self.pack_encoder_length = pack_encoder_length
        self.pack_decoder_length = pack_decoder_length
        if layout not in row_formats.LAYOUTS:
            raise ValueError(f"layout must be one of {row_formats.LAYOUTS}, got {layout!r}")
        self.layout = layout
        if layout == "decoder_only":  # the same features packed or not (seqio checks them)
            self.MODEL_FEATURES = {name: _INT for name in DECODER_ONLY_FEATURES}
            self.PACKING_FEATURE_DTYPES = {}
        self.stats = packing.PackingStats()

    @property
    def include_rationale(self) -> bool:
        return self.rationale_weight > 0

    def row_format(self, task_feature_lengths: Mapping[str, int]):
        """The format (row_formats) of the rows this converter produces, with their lengths."""
        lengths = row_formats.layout_lengths(
            self.layout,
            task_feature_lengths,
            self.include_rationale,
            self.pack,
            self.pack_encoder_length,
            self.pack_decoder_length,
        )
        return row_formats.row_format(self.layout, lengths, self.bos_id)

    def numpy_examples(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> Iterator[dict]:
        """The task's examples as dicts of numpy token arrays, each part cut to its length:
        what the packer takes (a batch in examples packs them per step itself)."""
        return _unblock(self._example_blocks(ds, task_feature_lengths))

    def _example_blocks(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        lengths = {k: task_feature_lengths[k] for k in PAIRED_FEATURES}

        # tf.data hands elements to Python one at a time at a high fixed cost, so examples
        # cross into numpy in padded blocks (with their lengths).
        def trim(ex):
            out = {k: ex[k][: lengths[k]] for k in PAIRED_FEATURES}
            out.update({f"{k}_length": tf.size(out[k]) for k in PAIRED_FEATURES})
            return out

        blocks_in = ds.map(trim, num_parallel_calls=tf.data.AUTOTUNE).padded_batch(
            _BLOCK,
            padded_shapes={
                **{k: [lengths[k]] for k in PAIRED_FEATURES},
                **{f"{k}_length": [] for k in PAIRED_FEATURES},
            },
        )
        return blocks_in

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        fmt = self.row_format(task_feature_lengths)
        features = fmt.features(self.pack)

        # Rows come back from numpy in blocks that are unbatched on the TensorFlow side.
        blocks_in = self._example_blocks(ds, task_feature_lengths)

        def examples():
            return _unblock(blocks_in)

        def row_blocks():
            if self.pack:
                rows = packing.pack_examples(examples(), fmt, self.include_rationale, self.max_open_rows, self.stats)
            else:
                rows = packing.pad_examples(examples(), fmt, self.include_rationale, self.stats)
            block = []
            for row in rows:
                block.append(row)
                if len(block) == _BLOCK:
                    yield {k: np.stack([r[k] for r in block]) for k in features}
                    block = []
            if block:
                yield {k: np.stack([r[k] for r in block]) for k in features}

        signature = {k: tf.TensorSpec([None, fmt.feature_length(k)], tf.int32) for k in features}
        return tf.data.Dataset.from_generator(row_blocks, output_signature=signature).unbatch()

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        fmt = self.row_format(task_feature_lengths)
        return {k: fmt.feature_length(k) for k in fmt.features(self.pack)}


def _unblock(blocks: tf.data.Dataset) -> Iterator[dict]:
    for block in blocks.as_numpy_iterator():
        for i in range(block["label_inputs"].shape[0]):
            yield {k: block[k][i, : block[f"{k}_length"][i]] for k in PAIRED_FEATURES}
