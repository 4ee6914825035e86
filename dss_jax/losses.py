"""Token cross-entropy (T5X semantics) and the weighted Distilling Step-by-Step loss.

    loss = label_loss + λ · rationale_loss

Every target token carries its task in `decoder_task_ids` (1 label, 2 rationale, 0
padding), so one packed forward pass feeds both losses. Each task's loss is normalised
on its own:

- "token" (default, as the reference implementation): the mean over that task's real
  target tokens in the global batch. With two separate HF forward passes the reference
  takes exactly this mean per pass.
- "sequence": the mean token loss of every segment (one example's target), then the
  mean over that task's segments; long rationales then weigh as much as short ones.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

import gin
from dss_jax.features import LABEL_TASK, RATIONALE_TASK


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LossConfig:
    rationale_weight: float = 1.0  # λ; 0 turns DSS into standard finetuning / distillation
    z_loss: float = 0.0  # T5X uses 1e-4 when pre-training; the reference uses none
    label_smoothing: float = 0.0
    normalization: str = "token"  # "token" | "sequence"

    def __post_init__(self):
        if self.normalization not in ("token", "sequence"):
            raise ValueError(f"LossConfig.normalization must be 'token' or 'sequence', got {self.normalization!r}")
        if self.rationale_weight < 0:
            raise ValueError(f"LossConfig.rationale_weight (λ) must be >= 0, got {self.rationale_weight}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"LossConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}")


def token_cross_entropy(
    logits: jax.Array, targets: jax.Array, z_loss: float = 0.0, label_smoothing: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """Per-token loss and its z-loss part, as T5X's `compute_weighted_cross_entropy`.

    logits: [batch, length, vocab] (any float dtype; computed in float32)
    targets: [batch, length] int
    Returns (loss, z_loss_part), both [batch, length]; loss already includes z_loss_part.
    With label smoothing the constant entropy of the smoothed target is subtracted, so a
    perfect prediction still scores 0.
    """
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)  # [batch, length]
    log_probs = logits - log_z[..., None]  # [batch, length, vocab]
    if label_smoothing:
        confidence = 1.0 - label_smoothing
        low = label_smoothing / (vocab - 1)
        normalizing = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
        soft = low + (confidence - low) * jax.nn.one_hot(targets, vocab, dtype=jnp.float32)
        nll = -jnp.sum(soft * log_probs, axis=-1) - normalizing
    else:
        nll = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    z = z_loss * jnp.square(log_z)
    return nll + z, z


def _segment_mean_weights(mask: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """Per-token weights so that summing weight·loss gives Σ_segments mean_token_loss."""
    if segment_ids is None:
        counts = jnp.sum(mask, axis=-1, keepdims=True)  # [batch, 1]
        return mask / jnp.maximum(counts, 1.0)
    # Segments are contiguous with ids 1..n in a row; count tokens of the same segment.
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [batch, length, length]
    counts = jnp.einsum("bqk,bk->bq", same.astype(jnp.float32), mask)
    return mask / jnp.maximum(counts, 1.0)


def _task_token_weights(batch: Mapping[str, jax.Array], config: LossConfig) -> dict[str, jax.Array]:
    """Per task, un-normalised token weights: the real-token mask, or 1/len(segment)."""
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    task_ids = batch.get("decoder_task_ids")
    if task_ids is None:  # a plain seq2seq batch: every target token is a label token
        task_ids = jnp.where(weights > 0, LABEL_TASK, 0)
    out = {}
    for name, task in (("label", LABEL_TASK), ("rationale", RATIONALE_TASK)):
        mask = weights * (task_ids == task).astype(jnp.float32)  # [batch, length]
        if config.normalization == "sequence":
            mask = _segment_mean_weights(mask, batch.get("decoder_segment_ids"))
        out[name] = mask
    return out


def loss_normalizers(batch: Mapping[str, jax.Array], config: LossConfig) -> dict[str, jax.Array]:
    """Each task's denominator over a whole (global) batch: its real target tokens, or
    its segments. Computed once per step so gradient accumulation over microbatches
    gives exactly the loss of the full batch."""
    return {name: jnp.sum(w) for name, w in _task_token_weights(batch, config).items()}


def dss_loss(
    logits: jax.Array,
    batch: Mapping[str, jax.Array],
    config: LossConfig,
    normalizers: Mapping[str, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted two-task loss `label + λ · rationale` of a (packed or unpacked) batch.

    logits: [batch, length, vocab]; batch: the converter's features (CONTRACTS.md).
    `normalizers` (from `loss_normalizers` on the full batch) lets a microbatch
    contribute its exact share; by default the batch normalises itself.
    Returns (total_loss, metrics); the metrics are sums and counts that add up across
    microbatches and hosts (`finalize_metrics` divides).
    """
    targets = batch["decoder_target_tokens"]
    real = batch["decoder_loss_weights"].astype(jnp.float32)
    task_ids = batch.get("decoder_task_ids")
    if task_ids is None:
        task_ids = jnp.where(real > 0, LABEL_TASK, 0)
    token_loss, z_part = token_cross_entropy(logits, targets, config.z_loss, config.label_smoothing)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    task_weights = _task_token_weights(batch, config)
    if normalizers is None:
        normalizers = {name: jnp.sum(w) for name, w in task_weights.items()}

    total = jnp.zeros((), jnp.float32)
    metrics: dict[str, jax.Array] = {}
    for name, task, lam in (("label", LABEL_TASK, 1.0), ("rationale", RATIONALE_TASK, config.rationale_weight)):
        task_loss = jnp.sum(token_loss * task_weights[name]) / jnp.maximum(normalizers[name], 1e-9)
        if lam:
            total = total + lam * task_loss
        mask = real * (task_ids == task).astype(jnp.float32)
        metrics[f"{name}/loss_sum"] = jnp.sum(token_loss * mask)
        metrics[f"{name}/z_loss_sum"] = jnp.sum(z_part * mask)
        metrics[f"{name}/correct_sum"] = jnp.sum(correct * mask)
        metrics[f"{name}/tokens"] = jnp.sum(mask)
    metrics["loss"] = total
    return total, metrics


def finalize_metrics(summed: Mapping[str, jax.Array]) -> dict[str, float]:
    """Turns summed counters into per-task means: loss, accuracy, z_loss per token."""
    out: dict[str, float] = {}
    for name in ("label", "rationale"):
        n = float(summed[f"{name}/tokens"])
        out[f"{name}/tokens"] = n
        if n > 0:
            out[f"{name}/loss"] = float(summed[f"{name}/loss_sum"]) / n
            out[f"{name}/accuracy"] = float(summed[f"{name}/correct_sum"]) / n
            out[f"{name}/z_loss"] = float(summed[f"{name}/z_loss_sum"]) / n
    return out
