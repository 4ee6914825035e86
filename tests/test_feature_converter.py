"""The DSS feature converter: packing correctness, masks, per-task weights, λ = 0."""

import numpy as np
import pytest

from dss_jax.data import packing
from dss_jax.data.feature_converter import convert_numpy
from dss_jax.features import PAIRED_FEATURES, UNPACKED_FEATURES

LENGTHS = {"label_inputs": 24, "label_targets": 6, "rationale_inputs": 24, "rationale_targets": 20}


def random_examples(n, seed=0, lengths=LENGTHS):
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        ex = {}
        n_in = int(rng.integers(1, lengths["label_inputs"] - 2))
        body = rng.integers(3, 100, n_in - 1)
        ex["label_inputs"] = np.concatenate([[50], body, [1]]).astype(np.int32)  # "predict:" + x + EOS
        ex["rationale_inputs"] = np.concatenate([[51], body, [1]]).astype(np.int32)  # "explain:" + x + EOS
        for key in ("label_targets", "rationale_targets"):
            m = int(rng.integers(1, lengths[key] + 1))
            ex[key] = np.concatenate([rng.integers(3, 100, m - 1), [1]]).astype(np.int32)
        examples.append(ex)
    return examples


def segments_of_rows(rows):
    """(inputs, targets, task) of every segment, read back through the segment ids."""
    out = []
    for r in range(rows["encoder_input_tokens"].shape[0]):
        enc_ids, dec_ids = rows["encoder_segment_ids"][r], rows["decoder_segment_ids"][r]
        n = int(enc_ids.max())
        assert int(dec_ids.max()) == n
        for k in range(1, n + 1):
            e, d = enc_ids == k, dec_ids == k
            task = np.unique(rows["decoder_task_ids"][r][d])
            assert task.size == 1
            out.append(
                (tuple(rows["encoder_input_tokens"][r][e]), tuple(rows["decoder_target_tokens"][r][d]), int(task[0]))
            )
    return out


def expected_segments(examples, include_rationale=True):
    out = []
    for ex in examples:
        out.append((tuple(ex["label_inputs"]), tuple(ex["label_targets"]), 1))
        if include_rationale:
            out.append((tuple(ex["rationale_inputs"]), tuple(ex["rationale_targets"]), 2))
    return out


@pytest.fixture(scope="module")
def packed():
    examples = random_examples(300)
    stats = packing.PackingStats()
    return examples, convert_numpy(examples, LENGTHS, pack=True, stats=stats), stats


def test_every_real_token_lands_exactly_once(packed):
    examples, rows, _ = packed
    assert sorted(segments_of_rows(rows)) == sorted(expected_segments(examples))
    n_enc = sum(len(ex["label_inputs"]) + len(ex["rationale_inputs"]) for ex in examples)
    n_dec = sum(len(ex["label_targets"]) + len(ex["rationale_targets"]) for ex in examples)
    assert np.count_nonzero(rows["encoder_segment_ids"]) == n_enc
    assert rows["decoder_loss_weights"].sum() == n_dec
    # Fewer rows than segments: label and rationale segments share rows.
    assert rows["encoder_input_tokens"].shape[0] < 2 * len(examples)
    shared = [
        (rows["decoder_task_ids"][r] == 1).any() and (rows["decoder_task_ids"][r] == 2).any()
        for r in range(rows["decoder_task_ids"].shape[0])
    ]
    assert sum(shared) > 0


def test_segments_are_contiguous_and_positions_restart(packed):
    _, rows, _ = packed
    for r in range(rows["encoder_input_tokens"].shape[0]):
        for side, tokens in (("encoder", "encoder_input_tokens"), ("decoder", "decoder_target_tokens")):
            seg, pos = rows[f"{side}_segment_ids"][r], rows[f"{side}_positions"][r]
            real = seg > 0
            # Real tokens first, then padding; segment ids 1, 2, ... in contiguous blocks.
            n_real = int(real.sum())
            assert real[:n_real].all() and not real[n_real:].any()
            assert (np.diff(seg[:n_real]) >= 0).all() and (np.diff(seg[:n_real]) <= 1).all() and seg[0] == 1
            for k in np.unique(seg[real]):
                assert list(pos[seg == k]) == list(range(int((seg == k).sum())))
            assert not rows[tokens][r][~real].any() and not pos[~real].any()


def _attention_masks(rows, r):
    enc, dec = rows["encoder_segment_ids"][r], rows["decoder_segment_ids"][r]
    enc_self = (enc[:, None] == enc[None, :]) & (enc[:, None] > 0)
    causal = np.tril(np.ones((dec.size, dec.size), bool))
    dec_self = (dec[:, None] == dec[None, :]) & (dec[:, None] > 0) & causal
    cross = (dec[:, None] == enc[None, :]) & (dec[:, None] > 0)
    return enc_self, dec_self, cross


def test_segments_never_attend_across_each_other(packed):
    examples, rows, _ = packed
    # Every token's origin: which original segment (index in expected order) it came from.
    origin_of = {}
    for i, seg in enumerate(expected_segments(examples)):
        origin_of.setdefault(seg, []).append(i)
    for r in range(rows["encoder_input_tokens"].shape[0]):
        enc_seg, dec_seg = rows["encoder_segment_ids"][r], rows["decoder_segment_ids"][r]
        enc_origin = np.full(enc_seg.shape, -1)
        dec_origin = np.full(dec_seg.shape, -1)
        for k in range(1, int(enc_seg.max()) + 1):
            key = (
                tuple(rows["encoder_input_tokens"][r][enc_seg == k]),
                tuple(rows["decoder_target_tokens"][r][dec_seg == k]),
                int(rows["decoder_task_ids"][r][dec_seg == k][0]),
            )
            origin = origin_of[key][0]
            enc_origin[enc_seg == k] = origin
            dec_origin[dec_seg == k] = origin
        enc_self, dec_self, cross = _attention_masks(rows, r)
        # Attention is allowed only between tokens of the same original segment.
        for mask, q, kv in (
            (enc_self, enc_origin, enc_origin),
            (dec_self, dec_origin, dec_origin),
            (cross, dec_origin, enc_origin),
        ):
            qi, ki = np.nonzero(mask)
            assert (q[qi] == kv[ki]).all() and (q[qi] >= 0).all()
        # And each decoder token sees all of its own encoder segment.
        for t in np.nonzero(dec_seg)[0]:
            assert cross[t].sum() == (enc_seg == dec_seg[t]).sum()


def test_decoder_inputs_shift_within_segments(packed):
    _, rows, _ = packed
    for r in range(rows["decoder_target_tokens"].shape[0]):
        seg = rows["decoder_segment_ids"][r]
        for k in np.unique(seg[seg > 0]):
            targets = rows["decoder_target_tokens"][r][seg == k]
            inputs = rows["decoder_input_tokens"][r][seg == k]
            assert inputs[0] == 0 and list(inputs[1:]) == list(targets[:-1])


def test_per_task_loss_weights_sum_to_real_tokens(packed):
    examples, rows, stats = packed
    w, task = rows["decoder_loss_weights"], rows["decoder_task_ids"]
    assert w[task == 1].sum() == sum(len(ex["label_targets"]) for ex in examples)
    assert w[task == 2].sum() == sum(len(ex["rationale_targets"]) for ex in examples)
    assert not w[task == 0].any() and ((task > 0) == (w > 0)).all()
    assert stats.label_target_tokens == w[task == 1].sum()
    assert stats.rationale_target_tokens == w[task == 2].sum()


def test_padding_efficiency_is_reported(packed):
    _, rows, stats = packed
    real = np.count_nonzero(rows["encoder_segment_ids"]) + rows["decoder_loss_weights"].sum()
    total = rows["encoder_segment_ids"].size + rows["decoder_loss_weights"].size
    assert stats.rows == rows["encoder_input_tokens"].shape[0]
    assert stats.efficiency == pytest.approx(real / total)
    unpacked_stats = packing.PackingStats()
    convert_numpy(random_examples(300), LENGTHS, pack=False, stats=unpacked_stats)
    assert stats.efficiency > 1.5 * unpacked_stats.efficiency  # packing is the point
    assert stats.as_dict()["decoder_efficiency"] == stats.decoder_efficiency


def test_rationale_weight_zero_leaves_rationales_out():
    examples = random_examples(100, seed=1)
    rows = convert_numpy(examples, LENGTHS, pack=True, rationale_weight=0.0)
    assert not (rows["decoder_task_ids"] == 2).any()
    assert sorted(segments_of_rows(rows)) == sorted(expected_segments(examples, include_rationale=False))
    assert rows["encoder_input_tokens"].shape[1] == LENGTHS["label_inputs"]
    assert rows["decoder_target_tokens"].shape[1] == LENGTHS["label_targets"]


def test_unpacked_one_segment_per_row():
    examples = random_examples(20, seed=2)
    rows = convert_numpy(examples, LENGTHS, pack=False)
    assert set(rows) == set(UNPACKED_FEATURES)
    assert rows["encoder_input_tokens"].shape == (40, 24) and rows["decoder_target_tokens"].shape == (40, 20)
    assert list(rows["decoder_task_ids"][:, 0]) == [1, 2] * 20
    for i, seg in enumerate(expected_segments(examples)):
        assert tuple(rows["encoder_input_tokens"][i][: len(seg[0])]) == seg[0]
        assert not rows["encoder_input_tokens"][i][len(seg[0]) :].any()
        assert tuple(rows["decoder_target_tokens"][i][: len(seg[1])]) == seg[1]


def test_deterministic_and_trims_long_parts():
    examples = random_examples(50, seed=3)
    a = convert_numpy(examples, LENGTHS)
    b = convert_numpy(examples, LENGTHS)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    long = {k: np.arange(2, 102, dtype=np.int32) for k in PAIRED_FEATURES}
    rows = convert_numpy([long], LENGTHS, pack=True)
    assert rows["decoder_loss_weights"][rows["decoder_task_ids"] == 1].sum() == LENGTHS["label_targets"]
    assert rows["decoder_loss_weights"][rows["decoder_task_ids"] == 2].sum() == LENGTHS["rationale_targets"]


def test_small_case_exact_rows():
    # Two examples; rows of 10 encoder and 7 decoder tokens (as T5X's docstring example).
    ex = [
        {
            "label_inputs": [7, 8, 1],
            "label_targets": [3, 1],
            "rationale_inputs": [9, 8, 1],
            "rationale_targets": [4, 5, 1],
        },
        {
            "label_inputs": [7, 6, 1],
            "label_targets": [2, 1],
            "rationale_inputs": [9, 6, 1],
            "rationale_targets": [5, 1],
        },
    ]
    lengths = {"label_inputs": 10, "label_targets": 7, "rationale_inputs": 10, "rationale_targets": 7}
    rows = convert_numpy(ex, lengths, pack=True)
    assert rows["encoder_input_tokens"].tolist() == [[7, 8, 1, 9, 8, 1, 7, 6, 1, 0], [9, 6, 1] + [0] * 7]
    assert rows["encoder_segment_ids"].tolist() == [[1, 1, 1, 2, 2, 2, 3, 3, 3, 0], [1, 1, 1] + [0] * 7]
    assert rows["encoder_positions"].tolist() == [[0, 1, 2, 0, 1, 2, 0, 1, 2, 0], [0, 1, 2] + [0] * 7]
    assert rows["decoder_target_tokens"].tolist() == [[3, 1, 4, 5, 1, 2, 1], [5, 1, 0, 0, 0, 0, 0]]
    assert rows["decoder_input_tokens"].tolist() == [[0, 3, 0, 4, 5, 0, 2], [0, 5, 0, 0, 0, 0, 0]]
    assert rows["decoder_segment_ids"].tolist() == [[1, 1, 2, 2, 2, 3, 3], [1, 1, 0, 0, 0, 0, 0]]
    assert rows["decoder_positions"].tolist() == [[0, 1, 0, 1, 2, 0, 1], [0, 1, 0, 0, 0, 0, 0]]
    assert rows["decoder_task_ids"].tolist() == [[1, 1, 2, 2, 2, 1, 1], [2, 2, 0, 0, 0, 0, 0]]
    assert rows["decoder_loss_weights"].tolist() == [[1] * 7, [1, 1, 0, 0, 0, 0, 0]]


def test_seqio_converter_matches_numpy_path():
    tf = pytest.importorskip("tensorflow")
    from dss_jax.data.feature_converter import DssFeatureConverter

    examples = random_examples(40, seed=4)

    def gen():
        for ex in examples:
            yield {**ex, "id": "x"}

    spec = {k: tf.TensorSpec([None], tf.int32) for k in PAIRED_FEATURES}
    spec["id"] = tf.TensorSpec([], tf.string)
    ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
    for pack in (True, False):
        conv = DssFeatureConverter(pack=pack)
        out = list(conv(ds, LENGTHS).as_numpy_iterator())
        expected = convert_numpy(examples, LENGTHS, pack=pack)
        assert set(out[0]) == set(expected)
        for k in expected:
            assert np.array_equal(np.stack([r[k] for r in out]), expected[k]), k
        assert conv.stats.rows == len(out)
        assert conv.get_model_feature_lengths(LENGTHS)["encoder_input_tokens"] == 24
    with pytest.raises(ValueError, match="rationale_weight"):
        DssFeatureConverter(rationale_weight=-1.0)


def test_packed_rows_with_their_own_lengths():
    examples = random_examples(200, seed=5)
    base_stats, wide_stats = packing.PackingStats(), packing.PackingStats()
    base = convert_numpy(examples, LENGTHS, stats=base_stats)
    wide = convert_numpy(examples, LENGTHS, stats=wide_stats, pack_encoder_length=96, pack_decoder_length=40)
    assert wide["encoder_input_tokens"].shape[1] == 96 and wide["decoder_target_tokens"].shape[1] == 40
    assert sorted(segments_of_rows(wide)) == sorted(expected_segments(examples))
    assert wide["encoder_input_tokens"].shape[0] < base["encoder_input_tokens"].shape[0]
    assert wide_stats.efficiency > base_stats.efficiency
    unpacked = convert_numpy(examples, LENGTHS, pack=False, pack_encoder_length=96)  # ignored when not packing
    assert unpacked["encoder_input_tokens"].shape[1] == 24
    with pytest.raises(ValueError, match=r"must hold the longest segment"):
        convert_numpy(examples, LENGTHS, pack_decoder_length=10)
