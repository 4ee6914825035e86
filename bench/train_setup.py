"""What both sides of the training benchmarks share, without flags (so tests and other
scripts import it freely): the model config, the seeded initial weights, the steps' example
sets and their packed rows, real-token counts, and pinning the process to N cores.
"""

from __future__ import annotations

import os


def pin_threads(threads: int) -> int:
    """Pins the process to `threads` cores (before torch/jax start their pools)."""
    cpus = sorted(os.sched_getaffinity(0))
    if threads and threads < len(cpus):
        cpus = cpus[:threads]
        os.sched_setaffinity(0, cpus)
    return len(cpus)


def model_config(size: str, vocab_size: int, trained_vocab: int, dropout: float, dtype: str):
    from dss_jax.model.config import T5Config

    if not vocab_size:
        vocab_size = -(-trained_vocab // 128) * 128 if size == "tiny" else 32128
    if vocab_size < trained_vocab:
        raise ValueError(f"--vocab_size={vocab_size} is smaller than the trained vocabulary ({trained_vocab})")
    return T5Config.preset(size, "t5.1.1", vocab_size=vocab_size, dropout_rate=dropout, dtype=dtype)


def step_sets(examples, n: int, count: int):
    return [examples[i * n : (i + 1) * n] for i in range(count)]


def pack_steps(sets, lengths, rows_shape, same_row_count: bool = False, multiple_of: int = 1):
    """Packed rows of each step's examples -> (rows per step, their row counts).

    The row count follows the examples (a step whose segments need 5 rows gets 5); the
    step is compiled once per distinct count, during warm-up. `same_row_count` pads every
    step with empty rows to the largest count instead (one compilation, wasted rows);
    `multiple_of` pads each count up to a multiple of it.
    """
    import numpy as np

    from dss_jax.data.packing import convert_numpy

    packed = [
        convert_numpy(s, lengths, pack=True, pack_encoder_length=rows_shape[0], pack_decoder_length=rows_shape[1])
        for s in sets
    ]
    if same_row_count:
        rows = max(p["encoder_input_tokens"].shape[0] for p in packed)
        packed = [{k: np.pad(v, ((0, rows - v.shape[0]), (0, 0))) for k, v in p.items()} for p in packed]
    if multiple_of > 1:  # equal microbatches
        packed = [{k: np.pad(v, ((0, -v.shape[0] % multiple_of), (0, 0))) for k, v in p.items()} for p in packed]
    return packed, [p["encoder_input_tokens"].shape[0] for p in packed]


def packed_real_tokens(rows) -> int:
    return int((rows["encoder_input_tokens"] != 0).sum() + (rows["decoder_loss_weights"] > 0).sum())


def segments_of(examples):
    """(encoder, decoder) real lengths of every segment, for the FLOPs formula."""
    out = []
    for ex in examples:
        out.append((len(ex["label_inputs"]), len(ex["label_targets"])))
        out.append((len(ex["rationale_inputs"]), len(ex["rationale_targets"])))
    return out


def initial_params(config, seed: int):
    """The initial weights of both sides (numpy): dss_jax's T5 initialisation, seeded.
    The reference loads them through an HF export (reference_t5.hf_model).

    Computed on the host CPU, op by op: one jitted initialisation compiles a separate
    random-number kernel for each of the model's ~560 (large) parameters, which took
    186 s for T5-large on an H200 machine (one reading); op by op, each distinct shape
    compiles once."""
    import jax
    import numpy as np
    from flax import linen as nn

    from dss_jax.model.t5 import init_variables

    with jax.default_device(jax.devices("cpu")[0]):
        params = nn.meta.unbox(init_variables(config, jax.random.PRNGKey(seed))["params"])
        return jax.tree_util.tree_map(np.asarray, params)
