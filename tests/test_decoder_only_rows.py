"""Decoder-only rows: one stream of prompt then target, packed so that no token attends
across segments and RoPE sees each segment from position 0; the loss of packed rows is
the loss of the same examples unpacked; decoding continues the prompt as training read it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_feature_converter import LENGTHS, random_examples

from dss_jax import losses
from dss_jax.data import packing
from dss_jax.data.feature_converter import convert_numpy
from dss_jax.data.row_formats import DecoderOnlyRows, Segment, layout_lengths
from dss_jax.features import DECODER_ONLY_FEATURES, LABEL_TASK, RATIONALE_TASK
from dss_jax.model import interface
from dss_jax.model.decoder_only.config import DecoderOnlyConfig
from dss_jax.model.decoder_only.network import attention_masks
from dss_jax.model.decoding import DecodeConfig, generate

EOS = 1
# A Gemma-3-like toy: a sliding layer and a global one, norms and biases off the default.
CONFIG = DecoderOnlyConfig(
    architecture="gemma3_text",
    vocab_size=128,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    d_ff=64,
    activation="gelu_pytorch_tanh",
    norm_plus_one=True,
    qk_norm=True,
    post_norms=True,
    scale_embedding=True,
    query_pre_attn_scalar=8,
    sliding_window=8,
    local_rope_theta=10000.0,
    layer_types=("sliding_attention", "full_attention"),
    eos_token_id=EOS,
    pad_token_id=0,
    bos_token_id=2,
)


def _segments_of(rows):
    """(prompt, target, task) of every segment, read back through segment ids and weights."""
    out = []
    for r in range(rows["decoder_input_tokens"].shape[0]):
        seg = rows["decoder_segment_ids"][r]
        for k in range(1, int(seg.max()) + 1):
            at = seg == k
            inputs, targets = rows["decoder_input_tokens"][r][at], rows["decoder_target_tokens"][r][at]
            weights, tasks = rows["decoder_loss_weights"][r][at], rows["decoder_task_ids"][r][at]
            np.testing.assert_array_equal(rows["decoder_positions"][r][at], np.arange(at.sum()))
            np.testing.assert_array_equal(inputs[1:], targets[:-1])  # one stream, shifted by one
            first = int(np.argmax(weights))
            assert weights[first:].all() and not weights[:first].any()
            assert set(tasks[first:]) == {int(tasks[-1])} and not tasks[:first].any()
            prompt = rows["decoder_causal_attention"][r][at]
            assert prompt[: first + 1].all() and not prompt[first + 1 :].any()
            out.append((tuple(inputs[: first + 1]), tuple(targets[first:]), int(tasks[-1])))
    return out


def test_a_segment_is_one_stream_with_loss_on_its_target_only():
    fmt = DecoderOnlyRows(12)
    row = fmt.packed_row([Segment(np.array([2, 7, 8, EOS]), np.array([5, 6, EOS]), LABEL_TASK)])
    assert set(row) == set(DECODER_ONLY_FEATURES)
    np.testing.assert_array_equal(row["decoder_input_tokens"][:6], [2, 7, 8, EOS, 5, 6])
    np.testing.assert_array_equal(row["decoder_target_tokens"][:6], [7, 8, EOS, 5, 6, EOS])
    # The prompt's last token (its EOS) predicts the first target token.
    np.testing.assert_array_equal(row["decoder_loss_weights"][:7], [0, 0, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(row["decoder_task_ids"][:7], [0, 0, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(row["decoder_causal_attention"][:7], [1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(row["decoder_segment_ids"], [1] * 6 + [0] * 6)


@pytest.mark.parametrize("rationale_weight", [1.0, 0.0])
def test_packing_keeps_every_segment_whole_and_in_order(rationale_weight):
    examples = random_examples(200)
    stats = packing.PackingStats()
    rows = convert_numpy(
        examples, LENGTHS, pack=True, rationale_weight=rationale_weight, layout="decoder_only", stats=stats
    )
    tasks = ("label", "rationale") if rationale_weight else ("label",)
    longest = max(LENGTHS[f"{t}_inputs"] + LENGTHS[f"{t}_targets"] - 1 for t in tasks)
    assert layout_lengths("decoder_only", LENGTHS, rationale_weight > 0) == (longest,)
    assert rows["decoder_input_tokens"].shape[1] == longest
    want = []
    for ex in examples:
        want.append((tuple(ex["label_inputs"]), tuple(ex["label_targets"]), LABEL_TASK))
        if rationale_weight:
            want.append((tuple(ex["rationale_inputs"]), tuple(ex["rationale_targets"]), RATIONALE_TASK))
    assert sorted(_segments_of(rows)) == sorted(want)
    unpacked_stats = packing.PackingStats()
    unpacked = convert_numpy(
        examples, LENGTHS, pack=False, rationale_weight=rationale_weight, layout="decoder_only", stats=unpacked_stats
    )
    assert _segments_of(unpacked) == want
    assert rows["decoder_input_tokens"].shape[0] < 0.6 * unpacked["decoder_input_tokens"].shape[0]
    assert stats.efficiency > 1.5 * unpacked_stats.efficiency and stats.encoder_total == 0


def test_packed_rows_hold_what_an_encoder_decoder_row_of_the_same_settings_holds():
    rows = convert_numpy(
        random_examples(20), LENGTHS, layout="decoder_only", pack_encoder_length=64, pack_decoder_length=32
    )
    assert rows["decoder_input_tokens"].shape[1] == 64 + 32 - 1
    with pytest.raises(ValueError, match="must hold the longest segment"):
        convert_numpy(random_examples(20), LENGTHS, layout="decoder_only", pack_decoder_length=10)


def _masks(config, rows):
    index = jnp.arange(rows["decoder_input_tokens"].shape[1])[None]
    prompt = rows["decoder_causal_attention"] if config.prompt_attention == "bidirectional" else None
    return attention_masks(config, index, index, jnp.asarray(rows["decoder_segment_ids"]), prompt)


@pytest.mark.parametrize("prompt_attention", ["causal", "bidirectional"])
def test_no_attention_weight_crosses_a_segment(prompt_attention):
    config = CONFIG.replace(prompt_attention=prompt_attention)
    rows = convert_numpy(
        random_examples(60, seed=1), LENGTHS, layout="decoder_only", pack_encoder_length=48, pack_decoder_length=49
    )
    segments = rows["decoder_segment_ids"]
    assert (segments.max(axis=1) >= 3).any()  # rows hold several segments
    same = segments[:, :, None] == segments[:, None, :]
    for kind, mask in _masks(config, rows).items():
        mask = np.asarray(mask)[:, 0]  # [rows, queries, keys]
        real = segments[:, :, None] > 0
        assert not (mask & real & ~same).any(), kind
        q, k = np.indices(mask.shape[1:])
        future = mask & (k > q)[None] & real
        prompt = rows["decoder_causal_attention"] > 0
        if prompt_attention == "causal":
            assert not future.any(), kind
        else:  # only prompt tokens see later prompt tokens of their own segment
            assert future.any() and not (future & ~(prompt[:, :, None] & prompt[:, None, :])).any(), kind


@pytest.mark.parametrize("prompt_attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_the_loss_of_packed_rows_is_the_loss_of_the_same_examples_unpacked(prompt_attention, normalization):
    model = interface.build(CONFIG.replace(prompt_attention=prompt_attention))
    params = jax.jit(model.init_variables)(jax.random.key(0))["params"]
    examples = random_examples(24, seed=2)
    packed = convert_numpy(examples, LENGTHS, layout="decoder_only", pack_encoder_length=48, pack_decoder_length=49)
    unpacked = convert_numpy(examples, LENGTHS, pack=False, layout="decoder_only")
    assert packed["decoder_input_tokens"].shape[0] < unpacked["decoder_input_tokens"].shape[0]
    config = losses.LossConfig(rationale_weight=0.7, normalization=normalization)

    @jax.jit
    def loss(params, batch):
        logits = model.logits(params, batch, enable_dropout=False)
        return losses.dss_loss(logits, batch, config)

    (a, ma), (b, mb) = loss(params, packed), loss(params, unpacked)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
    for key in ("label/loss_sum", "rationale/loss_sum", "label/tokens", "rationale/tokens"):
        np.testing.assert_allclose(float(ma[key]), float(mb[key]), rtol=1e-5, err_msg=key)
    # RoPE reads the positions (they restart per segment; RoPE being relative, a segment
    # shifted whole would score the same, but stretched it does not).
    stretched = {**packed, "decoder_positions": 2 * packed["decoder_positions"]}
    assert abs(float(loss(params, stretched)[0]) - float(b)) > 1e-4


@pytest.mark.parametrize("prompt_attention", ["causal", "bidirectional"])
def test_decoding_continues_the_prompt_as_training_read_it(prompt_attention):
    """Greedy decoding from DSS prompt rows (ending in EOS, padded with 0, a real token
    here) gives the tokens teacher forcing ranks first, row by row, whatever the lengths."""
    model = interface.build(CONFIG.replace(prompt_attention=prompt_attention))
    params = jax.jit(model.init_variables)(jax.random.key(3))["params"]
    rng = np.random.default_rng(4)
    prompts = [np.concatenate([[2], rng.integers(3, 128, n), [EOS]]).astype(np.int32) for n in (3, 9, 14)]
    rows = np.zeros((3, 20), np.int32)  # id 0 is a token like any other to the model
    for i, p in enumerate(prompts):
        rows[i, : len(p)] = p
    steps = 5
    out = np.asarray(generate(model, params, rows, config=DecodeConfig(max_decode_length=steps)).tokens)
    # Teacher forcing on one padded length (one compile): a token sees none after it.
    width = rows.shape[1] + steps
    logits_of = jax.jit(lambda p, b: model.logits(p, b, enable_dropout=False))
    for i, prompt in enumerate(prompts):
        sequence = list(prompt)
        for _ in range(steps):
            n = len(sequence)
            real = np.arange(width) < n
            batch = {
                "decoder_input_tokens": np.array([sequence + [0] * (width - n)], np.int32),
                "decoder_segment_ids": real[None].astype(np.int32),
                "decoder_positions": np.where(real, np.arange(width), 0)[None],
                "decoder_causal_attention": (np.arange(width) < len(prompt))[None].astype(np.int32),
            }
            logits = logits_of(params, batch)
            sequence.append(int(jnp.argmax(logits[0, n - 1])))
        generated = sequence[len(prompt) :]
        stop = generated.index(EOS) + 1 if EOS in generated else steps
        np.testing.assert_array_equal(out[i, :stop], generated[:stop], err_msg=f"row {i}")


def test_a_prefix_lm_student_is_not_exported_as_a_causal_one(tmp_path):
    model = interface.build(CONFIG.replace(prompt_attention="bidirectional"))
    params = jax.jit(model.init_variables)(jax.random.key(0))["params"]
    with pytest.raises(ValueError, match=r"prompt_attention='bidirectional' cannot be expressed"):
        model.export_hf(params, str(tmp_path / "out"), None, False)
    assert not (tmp_path / "out").exists()
