"""dss_jax: Distilling Step-by-Step on JAX/Flax, in the shape of T5X."""

__version__ = "0.1.0"
