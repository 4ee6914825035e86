"""The feature contract: the names of a task's and a batch's features and the task ids.

A DSS task yields PAIRED_FEATURES per example; the feature converter (data/row_formats.py)
turns them into rows in the student's batch layout: encoder-decoder rows of
ENCODER_FEATURES + DECODER_FEATURES (T5X's EncDecFeatureConverter names), decoder-only
rows of DECODER_ONLY_FEATURES (one stream: prompt, then target). Both carry
`decoder_task_ids`, which marks every target token with its task: LABEL_TASK
(`predict:`), RATIONALE_TASK (`explain:`), 0 elsewhere. The losses (losses.py), the
train step and every student model read batches by these names.
"""

LABEL_TASK = 1
RATIONALE_TASK = 2

PAIRED_FEATURES = ("label_inputs", "label_targets", "rationale_inputs", "rationale_targets")

ENCODER_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
DECODER_FEATURES = (
    "decoder_target_tokens",
    "decoder_input_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
    "decoder_task_ids",
)
PACKED_FEATURES = ENCODER_FEATURES + DECODER_FEATURES
# Rows of one segment each: no segment ids or positions.
UNPACKED_FEATURES = (
    "encoder_input_tokens",
    "decoder_target_tokens",
    "decoder_input_tokens",
    "decoder_loss_weights",
    "decoder_task_ids",
)
# What packed rows add to unpacked ones.
PACKING_FEATURES = ("encoder_segment_ids", "decoder_segment_ids", "encoder_positions", "decoder_positions")
# Decoder-only rows, packed or not: the decoder features plus T5X's prefix-LM mark of the
# prompt positions. Segment ids are always there (padding is segment 0: id 0 is a real
# token in these vocabularies).
DECODER_ONLY_FEATURES = DECODER_FEATURES + ("decoder_causal_attention",)
