r"""Where decoding time goes: the cost of one decoder step against its matrix products alone.

    python bench/decode_floor.py [--sizes small] [--batch_size 32] [--max_new_tokens 32]

For each method (greedy; beam with 4 beams) both sides (dss_jax `generate`,
`transformers.generate`, the same weights as bench/decode_throughput.py) decode once with
1 new token and once with `max_new_tokens`; the difference divided by the extra steps is
the cost of one decoder step, the 1-token call the fixed cost (encoder, cross-attention
keys/values, set-up). Then the matrix products of one decoder step (the 8 per layer of a
T5 v1.1 decoder layer on the step's rows, and the lm head) are timed alone, jitted in XLA
and in PyTorch: the floor one decoder step could reach with these libraries, before its
attention, normalisation, softmax, top-k and cache updates. Medians of `repeats` calls;
both sides alternate.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import decode_throughput  # its flags: sizes, batch_size, input_length, max_new_tokens, repeats, num_beams
import timing
from absl import app, flags

FLAGS = flags.FLAGS


def step_matmul_shapes(size: str) -> list[tuple[int, int]]:
    """[K, N] of the products one decoder layer runs per generated token (the cross-attention
    keys/values of the encoder output are made once, not per step)."""
    s = decode_throughput.SHAPES[size]
    d, a, f = s["d_model"], s["num_heads"] * s["d_kv"], s["d_ff"]
    self_attention = [(d, a)] * 3 + [(a, d)]
    cross_attention = [(d, a), (a, d)]
    gated_mlp = [(d, f), (d, f), (f, d)]
    return self_attention + cross_attention + gated_mlp


def matmul_floor(size: str, rows: int, repeats: int) -> dict:
    import jax
    import numpy as np
    import torch

    s = decode_throughput.SHAPES[size]
    layers, d, vocab = s["num_decoder_layers"], s["d_model"], decode_throughput.VOCAB
    rng = np.random.default_rng(0)
    shapes = step_matmul_shapes(size) + [(d, vocab)]
    xs = [rng.standard_normal((rows, k), np.float32) for k, _ in shapes]
    ws = [rng.standard_normal(shape, np.float32) for shape in shapes]
    out = {}
    products = jax.jit(lambda xs, ws: [x @ w for x, w in zip(xs, ws)])
    jx, jw = jax.device_put(xs), jax.device_put(ws)
    layer = timing.median_seconds(lambda: jax.block_until_ready(products(jx[:-1], jw[:-1])), repeats)
    head = timing.median_seconds(lambda: jax.block_until_ready(products(jx[-1:], jw[-1:])), repeats)
    out["xla_ms"] = 1e3 * (layers * layer + head)
    out["xla_lm_head_ms"] = 1e3 * head
    tx, tw = [torch.from_numpy(x) for x in xs], [torch.from_numpy(w) for w in ws]
    with torch.inference_mode():
        layer = timing.median_seconds(lambda: [x @ w for x, w in zip(tx[:-1], tw[:-1])], repeats)
        head = timing.median_seconds(lambda: tx[-1] @ tw[-1], repeats)
    out["torch_ms"] = 1e3 * (layers * layer + head)
    out["torch_lm_head_ms"] = 1e3 * head
    return out


def split(hf, model, params, tokens, method: str) -> dict:
    import jax
    import torch

    from dss_jax.model.decoding import DecodeConfig, generate

    beams = FLAGS.num_beams if method == "beam" else 1
    ids = torch.as_tensor(tokens, dtype=torch.long)
    mask = (ids != 0).long()
    n = FLAGS.max_new_tokens
    seconds = {}
    for length in (1, n):
        config = DecodeConfig(max_decode_length=length, method=method, num_beams=FLAGS.num_beams)
        kwargs = dict(max_new_tokens=length, do_sample=False, num_beams=beams)
        if beams > 1:
            kwargs.update(length_penalty=1.0, early_stopping=False)

        def ours():
            jax.block_until_ready(generate(model, params, tokens, config=config).tokens)  # noqa: B023  (used in this iteration)

        def theirs():
            with torch.inference_mode():
                hf.generate(input_ids=ids, attention_mask=mask, **kwargs)  # noqa: B023  (used in this iteration)

        ours(), theirs()  # compilation, warm-up
        times = timing.alternate({"dss_jax": ours, "transformers": theirs}, FLAGS.repeats)
        seconds[length] = {k: statistics.median(v) for k, v in times.items()}
    row = {"method": method if beams == 1 else f"beam{beams}", "rows_per_step": tokens.shape[0] * beams}
    for name in ("dss_jax", "transformers"):
        row[f"{name}_fixed_s"] = seconds[1][name]
        row[f"{name}_step_ms"] = 1e3 * (seconds[n][name] - seconds[1][name]) / (n - 1)
        row[f"{name}_call_s"] = seconds[n][name]
    return row


def main(argv):
    del argv
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    for size in FLAGS.sizes:
        if size not in decode_throughput.SHAPES:
            raise SystemExit(f"unknown size {size!r}; choose from {sorted(decode_throughput.SHAPES)}")
        with tempfile.TemporaryDirectory() as tmp:
            hf, model, params = decode_throughput.make_models(size, pathlib.Path(tmp))
        tokens = decode_throughput.make_inputs(FLAGS.batch_size, FLAGS.input_length)
        for method in FLAGS.methods:
            row = {"size": size, **split(hf, model, params, tokens, method)}
            row.update(matmul_floor(size, row["rows_per_step"], max(FLAGS.repeats, 10)))
            print(
                f"{size} {row['method']} ({row['rows_per_step']} rows/step): one decoder step "
                f"dss_jax {row['dss_jax_step_ms']:.1f} ms, transformers {row['transformers_step_ms']:.1f} ms; "
                f"its matmuls alone XLA {row['xla_ms']:.1f} ms, PyTorch {row['torch_ms']:.1f} ms | "
                f"fixed cost (encoder, set-up) dss_jax {row['dss_jax_fixed_s']:.3f} s, "
                f"transformers {row['transformers_fixed_s']:.3f} s | whole call "
                f"{row['dss_jax_call_s']:.3f} s vs {row['transformers_call_s']:.3f} s",
                flush=True,
            )
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    app.run(main)
