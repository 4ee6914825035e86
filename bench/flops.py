"""Model FLOPs of a T5 training step, counted on real tokens per segment, and MFU.

The formula (the one BENCHMARKS.md quotes). For a segment (one `predict:` or `explain:`
example part) with S_e real encoder tokens and S_d real decoder tokens, with
d = d_model, a = num_heads·d_kv, f = d_ff, g = 2 for gated feed-forward (v1.1) else 1,
V = vocab_size, L_e / L_d = encoder / decoder layers, the forward multiply-accumulates are

    encoder, per layer:  S_e·(4·d·a + (g+1)·d·f)          q, k, v, o; wi (x g), wo
                         + 2·S_e·S_e·a                   scores QK^T and the weighted sum
    decoder, per layer:  S_d·(4·d·a + 2·d·a + (g+1)·d·f)  self q,k,v,o; cross q,o; mlp
                         + 2·S_e·d·a                     cross-attention k, v of the encoder
                         + 2·S_d·S_d·a + 2·S_d·S_e·a     self- and cross-attention
    lm head:             S_d·d·V

and a training step costs 3 × 2 × MACs FLOPs (forward 2·MAC, backward twice the forward).
Causal self-attention is counted as the full S_d² square (as PaLM's MFU formula does);
embedding lookups, norms, softmax, dropout, the loss and the optimiser update are not
counted. Padding tokens are never counted: these are *model* FLOPs of the real tokens,
the same number for any implementation that trains on the same examples, so MFU compares
implementations fairly (an implementation that computes on padding gets no credit for it).

For big models this is close to 6·N·T (N non-embedding parameters plus the lm head, T
real tokens), plus the attention terms.
"""

from __future__ import annotations

from typing import Iterable, Optional

# Dense bf16 peak of one chip, TFLOP/s (vendor data sheets, without sparsity).
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,  # SXM; the PCIe card is 756: pass --peak_tflops
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 125.0,  # A10/A10G tensor cores, dense
    "V100": 125.0,  # fp16 tensor cores (V100 has no bf16)
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5p": 459.0,
}


def segment_macs(config, encoder_length: int, decoder_length: int) -> int:
    """Forward multiply-accumulates of one segment (see the module docstring)."""
    d, a, f, v = config.d_model, config.num_heads * config.d_kv, config.d_ff, config.vocab_size
    g = 2 if config.is_gated else 1
    s_e, s_d = encoder_length, decoder_length
    encoder = s_e * (4 * d * a + (g + 1) * d * f) + 2 * s_e * s_e * a
    decoder = s_d * (6 * d * a + (g + 1) * d * f) + 2 * s_e * d * a + 2 * s_d * s_d * a + 2 * s_d * s_e * a
    return config.num_encoder_layers * encoder + config.num_decoder_layers * decoder + s_d * d * v


def train_flops(config, segments: Iterable[tuple[int, int]]) -> int:
    """Model FLOPs of one training step over `segments` [(encoder_len, decoder_len), ...]."""
    return 6 * sum(segment_macs(config, e, dl) for e, dl in segments)


def peak_tflops(device_kind: str) -> Optional[float]:
    """The bf16 peak of a device from its `jax.Device.device_kind`, None when unknown."""
    kind = device_kind.upper()
    for name in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # "GH200" before "H200"
        if name.upper() in kind:
            return PEAK_BF16_TFLOPS[name]
    return None


def mfu(flops_per_step: float, step_seconds: float, peak_tflops_per_chip: float, chips: int = 1) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the chips' peak."""
    return flops_per_step / step_seconds / (peak_tflops_per_chip * 1e12 * chips)
