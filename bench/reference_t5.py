"""The reference implementation's training step, re-implemented for the benchmark.

google-research/distilling-step-by-step trains with Hugging Face's Seq2SeqTrainer and a
`TaskPrefixTrainer.compute_loss` that runs the model twice per batch:

    pred = model(**batch["pred"])    # "predict: x" -> label
    expl = model(**batch["expl"])    # "explain: x" -> rationale
    loss = alpha * pred.loss + (1 - alpha) * expl.loss       # alpha 0.5 by default

Its collator (DataCollatorForSeq2Seq under a task-prefix split) pads each of the two
batches to its own longest sequence, pads labels with -100 (ignored by the token-mean
cross-entropy) and builds decoder inputs by shifting the labels right. The Trainer then
clips the gradient norm at 1.0 (its `max_grad_norm` default), steps AdamW (lr 5e-5,
betas 0.9/0.999, eps 1e-8, no weight decay) and a linear decay schedule, and zeroes the
gradients. This module does the same with `transformers.T5ForConditionalGeneration` and
`torch.optim.AdamW`; nothing here is copied from the reference.

With alpha = 0.5 the loss is half of dss_jax's `label + λ·rationale` at λ = 1: the same
gradient direction (AdamW is invariant to the scale but for eps and the clipping).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

IGNORE_INDEX = -100


def hf_model(config, params, directory: str | None = None):
    """A `T5ForConditionalGeneration` holding our `params`, loaded the way the reference
    loads its checkpoints (`from_pretrained`) from an export by dss_jax.model.hf_convert.

    (transformers 5 builds every fresh T5 with the lm head tied to the embedding; only a
    checkpoint whose two matrices differ loads untied, as T5 v1.1 is.)
    """
    import tempfile

    import transformers

    from dss_jax.model import hf_convert

    transformers.logging.set_verbosity_error()  # the "not tying" notice is expected here
    with tempfile.TemporaryDirectory() as tmp:
        hf_convert.export_hf_checkpoint(params, config, directory or tmp)
        model = transformers.T5ForConditionalGeneration.from_pretrained(directory or tmp)
    if not config.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr():
        raise ValueError("the reference model's lm head is tied to the embedding, the config's is not")
    return model


def hf_weights(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def collate_part(examples: Sequence[Mapping[str, np.ndarray]], inputs: str, targets: str) -> dict[str, torch.Tensor]:
    """One of the two batches, padded to its own longest input and target."""
    n = len(examples)
    in_len = max(len(ex[inputs]) for ex in examples)
    tgt_len = max(len(ex[targets]) for ex in examples)
    input_ids = np.zeros((n, in_len), np.int64)
    attention_mask = np.zeros((n, in_len), np.int64)
    labels = np.full((n, tgt_len), IGNORE_INDEX, np.int64)
    for i, ex in enumerate(examples):
        input_ids[i, : len(ex[inputs])] = ex[inputs]
        attention_mask[i, : len(ex[inputs])] = 1
        labels[i, : len(ex[targets])] = ex[targets]
    # T5's decoder start is the pad id 0; -100 positions become pad, as HF's _shift_right.
    decoder_input_ids = np.zeros_like(labels)
    decoder_input_ids[:, 1:] = np.where(labels[:, :-1] == IGNORE_INDEX, 0, labels[:, :-1])
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "labels": torch.from_numpy(labels),
        "decoder_input_ids": torch.from_numpy(decoder_input_ids),
    }


def collate(examples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "pred": collate_part(examples, "label_inputs", "label_targets"),
        "expl": collate_part(examples, "rationale_inputs", "rationale_targets"),
    }


def real_tokens(batch: Mapping[str, Mapping[str, torch.Tensor]]) -> int:
    """Non-padding input + target tokens of both passes."""
    return sum(int(b["attention_mask"].sum()) + int((b["labels"] != IGNORE_INDEX).sum()) for b in batch.values())


def padded_tokens(batch: Mapping[str, Mapping[str, torch.Tensor]]) -> int:
    return sum(b["input_ids"].numel() + b["labels"].numel() for b in batch.values())


class ReferenceStep:
    """Model + AdamW + linear schedule; `step(batch)` is one optimiser step of the reference."""

    def __init__(
        self,
        model,
        *,
        alpha: float = 0.5,
        learning_rate: float = 5e-5,
        total_steps: int = 1000,
        max_grad_norm: float = 1.0,
        device: str = "cpu",
        autocast_dtype: torch.dtype | None = None,
    ):
        self.model = model.to(device).train()  # dropout on, as in training
        self.alpha = alpha
        self.max_grad_norm = max_grad_norm
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: max(0.0, (total_steps - s) / max(1, total_steps))
        )

    def to_device(self, batch):
        return {part: {k: v.to(self.device) for k, v in b.items()} for part, b in batch.items()}

    def loss(self, batch) -> torch.Tensor:
        with torch.autocast(self.device, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            pred = self.model(**batch["pred"])
            expl = self.model(**batch["expl"])
        return self.alpha * pred.loss + (1.0 - self.alpha) * expl.loss

    def step(self, batch) -> float:
        loss = self.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()
