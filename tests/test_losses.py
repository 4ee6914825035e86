"""The DSS loss: per-task normalisation, λ, z-loss, label smoothing, microbatch exactness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dss_jax import losses


def _batch(rng, b=3, length=7, vocab=11):
    logits = rng.normal(size=(b, length, vocab)).astype(np.float32) * 2
    targets = rng.integers(2, vocab, size=(b, length)).astype(np.int32)
    # Packed rows: a label segment then a rationale segment, then padding.
    task = np.array([[1, 1, 2, 2, 2, 0, 0], [2, 2, 2, 2, 1, 0, 0], [1, 2, 2, 2, 2, 2, 2]], np.int32)
    seg = np.array([[1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 1, 2, 0, 0], [1, 2, 2, 2, 2, 2, 2]], np.int32)
    batch = {
        "decoder_target_tokens": np.where(task > 0, targets, 0),
        "decoder_loss_weights": (task > 0).astype(np.int32),
        "decoder_task_ids": task,
        "decoder_segment_ids": seg,
    }
    return logits, batch


def _nll(logits, targets):
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, targets[..., None], -1)[..., 0]


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 3.0])
def test_total_is_label_mean_plus_lambda_rationale_mean(lam):
    logits, batch = _batch(np.random.default_rng(0))
    nll = _nll(logits, batch["decoder_target_tokens"])
    task = batch["decoder_task_ids"]
    expected = nll[task == 1].mean() + lam * nll[task == 2].mean()
    total, m = losses.dss_loss(jnp.asarray(logits), batch, losses.LossConfig(rationale_weight=lam))
    np.testing.assert_allclose(float(total), expected, rtol=1e-6)
    fin = losses.finalize_metrics(m)
    np.testing.assert_allclose(fin["label/loss"], nll[task == 1].mean(), rtol=1e-6)
    np.testing.assert_allclose(fin["rationale/loss"], nll[task == 2].mean(), rtol=1e-6)
    assert fin["label/tokens"] == (task == 1).sum() and fin["rationale/tokens"] == (task == 2).sum()


def test_lambda_zero_gives_no_gradient_to_rationale_tokens():
    logits, batch = _batch(np.random.default_rng(1))
    grad = jax.grad(lambda lg: losses.dss_loss(lg, batch, losses.LossConfig(rationale_weight=0.0))[0])(
        jnp.asarray(logits)
    )
    grad = np.asarray(grad)
    assert np.all(grad[batch["decoder_task_ids"] == 2] == 0)
    assert np.all(grad[batch["decoder_task_ids"] == 0] == 0)
    assert np.abs(grad[batch["decoder_task_ids"] == 1]).sum() > 0


def test_sequence_normalisation_averages_segments():
    logits, batch = _batch(np.random.default_rng(2))
    nll = _nll(logits, batch["decoder_target_tokens"])
    per_task = {1: [], 2: []}
    for r in range(3):
        for s in (1, 2):
            sel = batch["decoder_segment_ids"][r] == s
            t = batch["decoder_task_ids"][r][sel]
            if sel.any():
                per_task[int(t[0])].append(nll[r][sel].mean())
    expected = np.mean(per_task[1]) + 0.7 * np.mean(per_task[2])
    total, _ = losses.dss_loss(
        jnp.asarray(logits), batch, losses.LossConfig(rationale_weight=0.7, normalization="sequence")
    )
    np.testing.assert_allclose(float(total), expected, rtol=1e-6)


@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_microbatches_with_global_normalizers_sum_to_full_batch(normalization):
    logits, batch = _batch(np.random.default_rng(3))
    cfg = losses.LossConfig(rationale_weight=0.4, normalization=normalization)
    full, _ = losses.dss_loss(jnp.asarray(logits), batch, cfg)
    norms = losses.loss_normalizers(batch, cfg)
    parts = [
        losses.dss_loss(jnp.asarray(logits[i : i + 1]), {k: v[i : i + 1] for k, v in batch.items()}, cfg, norms)[0]
        for i in range(3)
    ]
    np.testing.assert_allclose(float(sum(parts)), float(full), rtol=1e-6)


def test_z_loss_and_label_smoothing_follow_t5x():
    logits = np.random.default_rng(4).normal(size=(2, 3, 5)).astype(np.float32)
    targets = np.array([[1, 2, 3], [4, 0, 1]], np.int32)
    loss, z = losses.token_cross_entropy(jnp.asarray(logits), targets, z_loss=1e-2)
    log_z = np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(np.asarray(z), 1e-2 * log_z**2, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(loss), _nll(logits, targets) + 1e-2 * log_z**2, rtol=1e-5)
    # Smoothed targets: the loss is the cross-entropy to the smoothed distribution minus
    # its entropy, i.e. KL(smoothed || model) >= 0 and 0 only at the smoothed distribution.
    ls = 0.1
    smooth = np.full((5,), ls / 4)
    smooth[2] = 1 - ls
    perfect = np.log(smooth)[None, None, :]
    l_perfect, _ = losses.token_cross_entropy(jnp.asarray(perfect), np.array([[2]]), label_smoothing=ls)
    assert abs(float(l_perfect[0, 0])) < 1e-5
    l_other, _ = losses.token_cross_entropy(jnp.asarray(logits), targets, label_smoothing=ls)
    assert np.all(np.asarray(l_other) > 0)


def test_bad_config_is_rejected_with_the_field_name():
    with pytest.raises(ValueError, match="normalization"):
        losses.LossConfig(normalization="tokens")
    with pytest.raises(ValueError, match="rationale_weight"):
        losses.LossConfig(rationale_weight=-1)
