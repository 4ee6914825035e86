r"""How fast can a training step on this machine be? The matrix-multiply ceiling.

    python bench/gemm_ceiling.py [--tokens 2048] [--threads 0] [--json_out FILE]

A T5 training step is matrix multiplications plus cheaper elementwise work, so no
implementation can turn model FLOPs into time faster than the machine multiplies
matrices. This measures that rate for the matmuls of a T5 v1.1-small step (the
projections, the feed-forward and the 32k-vocabulary lm head, each in its forward,
input-gradient and weight-gradient form) with `tokens` rows, float32 and bfloat16, in
XLA (jax.jit) and in PyTorch (the library the reference trains with), and prints the
FLOP-weighted rate of the whole set: the time one step's matmuls take divided into
their FLOPs.

The train benchmark's figures divide by it: an implementation that computed exactly the
model FLOPs of the real tokens (no padding, no wasted attention, zero elementwise cost)
at this rate would reach `ceiling / (model FLOPs / reference step time)` times the
reference's real tokens/s. That bounds what any CPU implementation can claim against
the reference at the same precision.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timing

_TOKENS = flags.DEFINE_integer("tokens", 2048, "Rows of the activations (tokens per step).")
_THREADS = flags.DEFINE_integer("threads", 0, "Threads for both libraries; 0: all schedulable cores.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per matmul (median).")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "float32, bfloat16.")
_JSON = flags.DEFINE_string("json_out", None, "Append the results as one JSON line.")

# T5 v1.1-small: d_model 512, heads*d_kv 384, d_ff 1024 (gated: two input matmuls), vocab 32128.
D, A, F, V = 512, 384, 1024, 32128
# (name, in, out, how many per step): encoder 8 layers (q, k, v, o, wi_0, wi_1, wo), decoder
# 8 layers (self q k v o, cross q k v o, wi_0, wi_1, wo), one lm head. The cross-attention
# k/v run over encoder tokens; treating all as `tokens` rows keeps the mix, not the counts.
MATMULS = [
    ("attention q/k/v", D, A, 8 * 3 + 8 * 6),
    ("attention out", A, D, 8 + 8 * 2),
    ("mlp in (gated)", D, F, 8 * 2 + 8 * 2),
    ("mlp out", F, D, 8 + 8),
    ("lm head", D, V, 1),
]


def _forms(tokens: int, n_in: int, n_out: int):
    """(name, lhs shape, rhs shape, contract lhs dim) of forward, input-grad, weight-grad."""
    return [
        ("forward", (tokens, n_in), (n_in, n_out), 1),  # x @ W
        ("input grad", (tokens, n_out), (n_out, n_in), 1),  # dy @ W.T (W.T materialised once)
        ("weight grad", (tokens, n_in), (tokens, n_out), 0),  # x.T @ dy: contraction over tokens
    ]


def measure(dtype_name: str, tokens: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    jdtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    rows = []
    totals = {"flops": 0.0, "jax_s": 0.0, "torch_s": 0.0}
    for name, n_in, n_out, count in MATMULS:
        for form, lhs_shape, rhs_shape, contract in _forms(tokens, n_in, n_out):
            lhs = rng.standard_normal(lhs_shape, np.float32)
            rhs = rng.standard_normal(rhs_shape, np.float32)
            jl, jr = jnp.asarray(lhs, jdtype), jnp.asarray(rhs, jdtype)
            tl, tr = torch.from_numpy(lhs).to(tdtype), torch.from_numpy(rhs).to(tdtype)
            dims = (((contract,), (0,)), ((), ()))
            f = jax.jit(lambda a, b, dims=dims: jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32))
            jax_s = timing.median_seconds(lambda: f(jl, jr).block_until_ready(), repeats)  # noqa: B023  (used in this iteration)
            torch_s = timing.median_seconds(lambda: (tl.T if contract == 0 else tl) @ tr, repeats)  # noqa: B023  (used in this iteration)
            flops = 2.0 * lhs_shape[0] * lhs_shape[1] * rhs_shape[1]
            rows.append(
                {
                    "matmul": name,
                    "form": form,
                    "shape": [list(lhs_shape), list(rhs_shape)],
                    "count": count,
                    "jax_gflops": flops / jax_s / 1e9,
                    "torch_gflops": flops / torch_s / 1e9,
                }
            )
            totals["flops"] += count * flops
            totals["jax_s"] += count * jax_s
            totals["torch_s"] += count * torch_s
    return {
        "dtype": dtype_name,
        "rows": rows,
        "jax_gflops": totals["flops"] / totals["jax_s"] / 1e9,
        "torch_gflops": totals["flops"] / totals["torch_s"] / 1e9,
    }


def main(argv):
    del argv
    threads = _THREADS.value or len(os.sched_getaffinity(0))
    import torch

    torch.set_num_threads(threads)
    results = []
    for dtype_name in _DTYPES.value:
        r = measure(dtype_name, _TOKENS.value, _REPEATS.value)
        results.append(r)
        print(f"== {dtype_name}, {_TOKENS.value} tokens, {threads} threads, load {os.getloadavg()[0]:.2f}")
        print(f"  {'matmul':<18} {'form':<12} {'jax GFLOP/s':>12} {'torch GFLOP/s':>14}")
        for row in r["rows"]:
            print(f"  {row['matmul']:<18} {row['form']:<12} {row['jax_gflops']:>12.0f} {row['torch_gflops']:>14.0f}")
        print(
            f"  step's matmul mix (FLOP-weighted): jax {r['jax_gflops']:.0f} GFLOP/s, "
            f"torch {r['torch_gflops']:.0f} GFLOP/s"
        )
    if _JSON.value:
        with open(_JSON.value, "a") as f:
            f.write(
                json.dumps(
                    {"tokens": _TOKENS.value, "threads": threads, "load_avg_1m": os.getloadavg()[0], "results": results}
                )
                + "\n"
            )


if __name__ == "__main__":
    sys.exit(app.run(main))
