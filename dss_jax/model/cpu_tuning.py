"""What this project measured to make XLA:CPU fast, in one place, so that the model's
layers are only about T5. Each trick applies on the CPU backend only and changes no
result beyond float rounding; BENCHMARKS.md has the measurements.

1. The weight gradient of a projection (`contract`, which `layers.project` calls): dW =
   x^T . dy with x transposed explicitly, instead of letting XLA:CPU transpose the larger
   dy inside its producer's fusion. `plain_contractions()` turns it off for the traces
   inside (dss_jax.aot compiles for accelerators that way).
2. Decoding's compiler options (`decode_compiler_options`): YNNPACK gets single dots,
   not whole fusions, in decoding programs.

Nothing here reads the environment at trace time; the user's XLA_FLAGS still win for 2.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os

import jax
import jax.numpy as jnp

# ----- 1. the weight gradient of a projection ---------------------------------------------


_PLAIN_CONTRACTIONS = False


@contextlib.contextmanager
def plain_contractions():
    """Traces inside use the plain contraction and its default gradient whatever the
    backend: for programs compiled on a CPU host as a stand-in for an accelerator's
    (dss_jax.aot), and for measuring what the tuned gradient saves."""
    global _PLAIN_CONTRACTIONS
    before, _PLAIN_CONTRACTIONS = _PLAIN_CONTRACTIONS, True
    try:
        yield
    finally:
        _PLAIN_CONTRACTIONS = before


def explicit_weight_gradient() -> bool:
    """Whether `contract` uses its own weight gradient (below): on XLA:CPU, outside
    `plain_contractions()`. Accelerators' matmul libraries take transposed operands as
    they are. Read when a function is traced."""
    return jax.default_backend() == "cpu" and not _PLAIN_CONTRACTIONS


def _contract(x: jax.Array, kernel: jax.Array, n_in: int, out_dtype) -> jax.Array:
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    return jax.lax.dot_general(x, kernel, (contract, ((), ())), preferred_element_type=out_dtype)


_project = jax.custom_vjp(_contract, nondiff_argnums=(2, 3))


def _project_fwd(x, kernel, n_in, out_dtype):
    return _project(x, kernel, n_in, out_dtype), (x, kernel)


def _project_bwd(n_in, out_dtype, residuals, dy):
    x, kernel = residuals
    n_out = kernel.ndim - n_in
    dy = dy.astype(x.dtype)
    # dx = dy . kernel^T over the output dims.
    dx = jax.lax.dot_general(
        dy, kernel, ((tuple(range(dy.ndim - n_out, dy.ndim)), tuple(range(n_in, kernel.ndim))), ((), ()))
    )
    # dW = x^T . dy over all token positions. XLA:CPU's dot wants the contracted dim
    # minor in its left operand; left to itself it transposes whichever operand it likes,
    # often dy (the lm head's [tokens, 32128] logits gradient, the gated-GELU gradient) by
    # fusing a strided transposed write into the elementwise producer of dy, ~20 ns per
    # element. Transposing x ourselves (the barrier keeps XLA from folding it back into
    # the dot) costs one tiled transpose of the smaller operand.
    k_in = math.prod(kernel.shape[:n_in])
    xt = jax.lax.optimization_barrier(x.reshape(-1, k_in).T)
    dw = jnp.dot(xt, dy.reshape(-1, math.prod(kernel.shape[n_in:])), preferred_element_type=jnp.float32)
    return dx.astype(x.dtype), dw.reshape(kernel.shape).astype(kernel.dtype)


_project.defvjp(_project_fwd, _project_bwd)


def contract(x: jax.Array, kernel: jax.Array, n_in: int, out_dtype=None) -> jax.Array:
    """x [..., *in] . kernel [*in, *out] -> [..., *out], with the CPU-tuned gradient where it applies."""
    fn = _project if explicit_weight_gradient() else _contract
    return fn(x, kernel, n_in, out_dtype)


# ----- 2. decoding's compiler options -----------------------------------------------------

# XLA:CPU (jaxlib 0.10) hands whole fusions to YNNPACK by default: the dots and also the
# elementwise and reduction ops around them. In a beam search step it fuses the lm head's
# [rows, 32128] product with log-softmax's max and subtraction, and that fusion takes 2.5x
# as long as the product alone (60 vs 24 ms per step on the T5 v1.1-small shape of
# bench/decode_floor.py, per-thunk profile). Decoding programs on a CPU therefore hand
# YNNPACK single dots only. Training keeps XLA's default, which measured as fast or faster.
YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"
CPU_DECODE_COMPILER_OPTIONS = {YNN_FLAG: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def decode_compiler_options() -> dict:
    """The compiler options of decoding programs: CPU_DECODE_COMPILER_OPTIONS, or none when
    XLA_FLAGS already chooses YNNPACK's fusions (the user's setting wins) or this jaxlib
    does not know the option."""
    if YNN_FLAG in os.environ.get("XLA_FLAGS", ""):
        return {}
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_DECODE_COMPILER_OPTIONS).lower(1.0).compile()
    except Exception as e:  # an XLA without the option decodes as before
        logging.info("decoding with XLA:CPU's default fusions (%s not accepted: %s)", YNN_FLAG, e)
        return {}
    return dict(CPU_DECODE_COMPILER_OPTIONS)
