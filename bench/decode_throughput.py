r"""Decoding throughput: dss_jax `generate` vs transformers `generate`, same weights.

    python bench/decode_throughput.py [--sizes tiny,small] [--batch_size 32] [--repeats 3]

For each model shape a T5 v1.1 is randomly initialised with `transformers` (PyTorch,
float32, CPU unless torch sees a GPU), saved, and imported into dss_jax with
`dss_jax.model.hf_convert`, so both sides decode with the same weights. Shapes: "tiny"
(the test model: d_model 32, 2 layers) and "small" (T5-v1.1-small: d_model 512, 8
layers), both with T5's 32128-token vocabulary; the EOS row of the output layer is zeroed
so that no row stops early (random weights otherwise emit EOS after a few tokens). Inputs: `batch_size` rows of random
tokens of varied lengths (padded to `input_length`); `max_new_tokens` generated tokens.

Each (shape, method) pair runs one untimed call per side first (JAX compilation, torch
warm-up), then `repeats` timed calls alternating dss_jax / transformers, so both see the
same machine load. Reports the median examples/s per side, their ratio, and how many
rows the two produced identically (they should all agree: the decoders reproduce HF's).
Writes bench/results/decode_throughput.json and .png.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import timing
from absl import app, flags

_SIZES = flags.DEFINE_list("sizes", ["tiny", "small"], "Model shapes: tiny, small.")
_METHODS = flags.DEFINE_list("methods", ["greedy", "beam"], "Decoding methods: greedy, beam (4 beams).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Examples per generate call.")
_INPUT_LENGTH = flags.DEFINE_integer("input_length", 64, "Padded encoder length.")
_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 32, "Tokens generated per example.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per side.")
_NUM_BEAMS = flags.DEFINE_integer("num_beams", 4, "Beams for method=beam.")
_OUT_DIR = flags.DEFINE_string("out_dir", str(pathlib.Path(__file__).resolve().parent / "results"), "Output folder.")

VOCAB = 32128
SHAPES = {
    "tiny": dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4),
    "small": dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6),
}


def make_models(size: str, directory: pathlib.Path):
    import torch
    import transformers

    from dss_jax.model import hf_convert, interface

    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=VOCAB,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
        **SHAPES[size],
    )
    # transformers 5's T5Config turns tie_word_embeddings=False into "no output rescaling"
    # but still ties the lm head to the embedding; untied afterwards, the model has its
    # own lm head, as T5 v1.1 checkpoints do (but then also separate encoder and decoder
    # input embeddings, which T5 shares: share them again).
    config.tie_word_embeddings = False
    hf = transformers.T5ForConditionalGeneration(config).eval()
    hf.encoder.set_input_embeddings(hf.shared)
    hf.decoder.set_input_embeddings(hf.shared)
    assert hf.lm_head.weight.data_ptr() != hf.shared.weight.data_ptr()
    with torch.no_grad():
        # EOS logit 0 while the best of 32k random logits is positive: every row decodes
        # all max_new_tokens on both sides, so the work per call is fixed and equal.
        hf.lm_head.weight[config.eos_token_id] = 0.0
    hf.save_pretrained(directory)
    params, ours_config, _ = hf_convert.import_hf_checkpoint(directory)
    return hf, interface.build(ours_config), params


def make_inputs(batch: int, length: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens = np.zeros((batch, length), np.int32)
    for i in range(batch):
        n = int(rng.integers(length // 2, length + 1))
        tokens[i, : n - 1] = rng.integers(2, VOCAB, n - 1)
        tokens[i, n - 1] = 1  # EOS, as the task features end
    return tokens


def run_pair(hf, model, params, tokens, method: str) -> dict:
    import jax
    import numpy as np
    import torch

    from dss_jax.model.decoding import DecodeConfig, generate

    config = DecodeConfig(max_decode_length=_NEW_TOKENS.value, method=method, num_beams=_NUM_BEAMS.value)
    params = jax.device_put(params)
    ids = torch.as_tensor(tokens, dtype=torch.long)
    mask = (ids != 0).long()
    hf_kwargs = dict(
        max_new_tokens=_NEW_TOKENS.value, do_sample=False, num_beams=_NUM_BEAMS.value if method == "beam" else 1
    )
    if method == "beam":
        hf_kwargs.update(length_penalty=1.0, early_stopping=False)

    def ours():
        return np.asarray(jax.block_until_ready(generate(model, params, tokens, config=config).tokens))

    def theirs():
        with torch.inference_mode():
            out = hf.generate(input_ids=ids, attention_mask=mask, **hf_kwargs)
        return out[:, 1:].numpy()  # without the decoder start token

    a, b = ours(), theirs()  # warm-up: compilation and first-call costs are not timed
    width = min(a.shape[1], b.shape[1])
    agree = int(np.sum(np.all(a[:, :width] == b[:, :width], axis=1)))
    # Decoder steps per row: up to and with its first EOS, else all max_new_tokens.
    is_eos = a == 1
    steps = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, a.shape[1])
    generated = float(np.mean(steps))
    times = timing.alternate({"dss_jax": ours, "transformers": theirs}, _REPEATS.value)
    batch = tokens.shape[0]
    result = {name: batch / statistics.median(t) for name, t in times.items()}
    return {
        "method": method if method == "greedy" else f"beam{_NUM_BEAMS.value}",
        "dss_jax_examples_per_s": result["dss_jax"],
        "transformers_examples_per_s": result["transformers"],
        "ratio_dss_jax_over_transformers": result["dss_jax"] / result["transformers"],
        "rows_identical": agree,
        "mean_tokens_until_eos": generated,
        "rows": batch,
        "seconds": times,
    }


def plot(results: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['size']}\n{r['method']}" for r in results]
    x = range(len(results))
    fig, ax = plt.subplots(figsize=(1.8 * len(results) + 2, 3.5))
    ax.bar([i - 0.2 for i in x], [r["dss_jax_examples_per_s"] for r in results], 0.4, label="dss_jax")
    ax.bar([i + 0.2 for i in x], [r["transformers_examples_per_s"] for r in results], 0.4, label="transformers")
    ax.set_xticks(list(x), labels)
    ax.set_yscale("log")
    ax.set_ylabel("examples / s (log)")
    ax.set_title(f"decoding throughput, batch {_BATCH.value}, {_NEW_TOKENS.value} new tokens")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    del argv
    import jax
    import torch

    results = []
    for size in _SIZES.value:
        if size not in SHAPES:
            raise SystemExit(f"unknown size {size!r}; choose from {sorted(SHAPES)}")
        with tempfile.TemporaryDirectory() as tmp:
            hf, model, params = make_models(size, pathlib.Path(tmp))
        tokens = make_inputs(_BATCH.value, _INPUT_LENGTH.value)
        for method in _METHODS.value:
            row = {"size": size, **run_pair(hf, model, params, tokens, method)}
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "seconds"}), flush=True)
    out_dir = pathlib.Path(_OUT_DIR.value)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "batch_size": _BATCH.value,
        "input_length": _INPUT_LENGTH.value,
        "max_new_tokens": _NEW_TOKENS.value,
        "repeats": _REPEATS.value,
        "jax_backend": jax.default_backend(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "results": results,
    }
    (out_dir / "decode_throughput.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(results, out_dir / "decode_throughput.png")
    print(f"wrote {out_dir}/decode_throughput.json and .png")


if __name__ == "__main__":
    app.run(main)
