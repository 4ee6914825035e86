r"""A decoder-only student, dss_jax against transformers (PyTorch): training tokens/s and
decoding tokens/s, side by side in one process, the same weights and the same examples.

    python bench/decoder_only.py [--sizes tiny,small] [--examples_per_step 16] [--steps 6]

Each shape is a Qwen3 with random weights built by transformers (float32) and converted
into dss_jax (`interface.import_hf_checkpoint`), so both sides start from the same weights.
"tiny": d_model 64, 2 layers; "small": d_model 512, 8 layers, 8 heads (2 key/value),
d_ff 1536; a 32000-token vocabulary.

Examples: N Distilling Step-by-Step examples per step of random tokens, each a `predict:`
segment (prompt 24-64 tokens, label 2-8) and an `explain:` segment (the same prompt,
rationale 24-96), the loss on target tokens only, `label + 1.0 * rationale`, each task
averaged over its target tokens, AdamW (lr 5e-5, clipping at 1.0):
  transformers: the 2N segments as 2N rows padded to the longest, one forward/backward
  (the usual way to fine-tune a causal LM on prompt/target pairs: labels -100 on the
  prompt and the padding), the two task means from one token loss;
  dss_jax: `Trainer.train_step` on the rows `convert_numpy(layout="decoder_only")` packs the
  same segments into (256 tokens each; every step padded to the same number of rows).
Training throughput is REAL tokens per second (prompt and target tokens, no padding).

Decoding: greedy, `--new_tokens` tokens for a batch of `--decode_batch` prompts of varied
lengths (transformers: left-padded with an attention mask; dss_jax: right-padded, the
model finds each prompt's end), the EOS row zeroed so that no row stops early; reports
generated tokens per second and how many rows agree token for token.

Steps and calls alternate between the sides after one untimed warm-up call each
(compilation), so both see the same machine load; figures are medians. Threads: both
sides use the process's CPU set. Writes bench/results/decoder_only.json.
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
_EXAMPLES = flags.DEFINE_integer("examples_per_step", 16, "DSS examples per training step.")
_STEPS = flags.DEFINE_integer("steps", 6, "Timed training steps per side.")
_DECODE_BATCH = flags.DEFINE_integer("decode_batch", 16, "Prompts per generate call.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 32, "Tokens generated per prompt.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed generate calls per side.")
_OUT = flags.DEFINE_string(
    "out", str(pathlib.Path(__file__).resolve().parent / "results" / "decoder_only.json"), "Results file."
)

VOCAB, EOS, ROW = 32000, 1, 256
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16),
    "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=64),
}  # fmt: skip


def make_models(size: str, directory: pathlib.Path):
    """(transformers model, dss_jax model, dss_jax params): the same random Qwen3."""
    import torch
    import transformers

    from dss_jax.model import interface

    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        vocab_size=VOCAB, eos_token_id=EOS, pad_token_id=0, bos_token_id=2, tie_word_embeddings=True, **SHAPES[size]
    )
    config._attn_implementation = "sdpa"
    hf = transformers.Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        hf.get_output_embeddings().weight[EOS] = 0.0  # a logit of 0 never leads 32000: no row stops early
    hf.save_pretrained(directory)
    params, model_config, _ = interface.import_hf_checkpoint(str(directory))
    return hf, interface.build(model_config), params


def examples(n: int, seed: int) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        body = rng.integers(3, VOCAB, int(rng.integers(20, 60))).tolist()
        target = lambda lo, hi: rng.integers(3, VOCAB, int(rng.integers(lo, hi))).tolist() + [EOS]
        out.append(
            {
                "label_inputs": [2, 100] + body + [EOS],
                "rationale_inputs": [2, 101] + body + [EOS],
                "label_targets": target(1, 8),
                "rationale_targets": target(23, 96),
            }
        )
    return out


LENGTHS = {"label_inputs": 64, "label_targets": 8, "rationale_inputs": 64, "rationale_targets": 96}


def real_tokens(batch: list[dict]) -> int:
    return sum(len(ex[k]) for ex in batch for k in LENGTHS)


def hf_train_step(hf, optimizer, batch: list[dict]):
    """One forward/backward over the 2N segments as padded rows, the DSS loss, AdamW."""
    import torch

    rows, labels, tasks = [], [], []
    for ex in batch:
        for task, (inputs, targets) in enumerate(
            [(ex["label_inputs"], ex["label_targets"]), (ex["rationale_inputs"], ex["rationale_targets"])]
        ):
            rows.append(inputs + targets)
            labels.append([-100] * len(inputs) + targets)
            tasks.append(task)
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    target = torch.tensor([y + [-100] * (width - len(y)) for y in labels])[:, 1:]
    logits = hf(input_ids=ids, attention_mask=mask).logits[:, :-1]
    token_loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, VOCAB), target.reshape(-1), ignore_index=-100, reduction="none"
    ).view(target.shape)
    real = (target != -100).float()
    is_rationale = torch.tensor(tasks).float()[:, None]
    label_mask, rationale_mask = real * (1 - is_rationale), real * is_rationale
    loss = (token_loss * label_mask).sum() / label_mask.sum() + (
        token_loss * rationale_mask
    ).sum() / rationale_mask.sum()
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach())


def bench_train(size: str, hf, model, params) -> dict:
    import jax
    import numpy as np
    import torch

    from dss_jax import losses, optimizers, partitioning
    from dss_jax.data import packing
    from dss_jax.data.row_formats import row_format
    from dss_jax.training.step import Trainer

    steps = [examples(_EXAMPLES.value, seed) for seed in range(_STEPS.value + 1)]
    fmt = row_format("decoder_only", (ROW,))
    packed = [packing.pack_group([{k: np.asarray(v, np.int32) for k, v in ex.items()} for ex in b], fmt) for b in steps]
    rows = max(map(len, packed))  # one row count for every step: one compiled step
    batches = [packing.pad_rows(p, rows, fmt) for p in packed]
    trainer = Trainer(
        model,
        loss_config=losses.LossConfig(rationale_weight=1.0),
        optimizer_config=optimizers.OptimizerConfig(name="adamw", learning_rate=5e-5, clip_grad_norm=1.0),
        total_steps=1000,
        mesh=partitioning.make_mesh(1, jax.devices()[:1]),  # one device, as transformers uses
    )
    state = {"jax": trainer.state_from_params(params)}
    device_batches = [trainer.global_batch(b) for b in batches]
    optimizer = torch.optim.AdamW(hf.parameters(), lr=5e-5, weight_decay=0.0)
    hf.train()
    losses_seen = {"jax": [], "transformers": []}
    index = {"i": 0}

    def jax_step():
        state["jax"], metrics = trainer.train_step(state["jax"], device_batches[index["i"]])
        losses_seen["jax"].append(float(jax.device_get(metrics["loss"])))

    def hf_step():
        losses_seen["transformers"].append(hf_train_step(hf, optimizer, steps[index["i"]]))

    jax_step(), hf_step()  # warm-up on step 0 (compilation), the same data both sides
    times = {"jax": [], "transformers": []}
    for i in range(1, _STEPS.value + 1):
        index["i"] = i
        for name, seconds in timing.alternate({"jax": jax_step, "transformers": hf_step}, 1).items():
            times[name] += seconds
    tokens = statistics.median(real_tokens(b) for b in steps[1:])
    out = {
        name: {"median_step_s": statistics.median(t), "real_tokens_per_s": tokens / statistics.median(t)}
        for name, t in times.items()
    }
    out["ratio"] = out["jax"]["real_tokens_per_s"] / out["transformers"]["real_tokens_per_s"]
    out["first_loss"] = {k: v[0] for k, v in losses_seen.items()}
    out["rows_per_step"] = {"jax_packed": rows, "transformers_padded": 2 * _EXAMPLES.value}
    hf.eval()
    return out


def bench_decode(hf, model, params) -> dict:
    import jax
    import numpy as np
    import torch

    from dss_jax.model.decoding import DecodeConfig, generate

    rng = np.random.default_rng(7)
    prompts = [[2] + rng.integers(3, VOCAB, int(n)).tolist() + [EOS] for n in rng.integers(16, 64, _DECODE_BATCH.value)]
    width = max(map(len, prompts))
    right = np.array([p + [0] * (width - len(p)) for p in prompts], np.int32)
    left = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    config = DecodeConfig(max_decode_length=_NEW_TOKENS.value)
    out = {}

    def ours():
        out["jax"] = np.asarray(jax.device_get(generate(model, params, right, config=config).tokens))

    def theirs():
        with torch.no_grad():
            generated = hf.generate(
                input_ids=left, attention_mask=mask, max_new_tokens=_NEW_TOKENS.value, do_sample=False, pad_token_id=0
            )
        out["transformers"] = generated[:, width:].numpy()

    ours(), theirs()
    times = timing.alternate({"jax": ours, "transformers": theirs}, _REPEATS.value)
    tokens = _DECODE_BATCH.value * _NEW_TOKENS.value
    result = {
        name: {"median_s": statistics.median(t), "tokens_per_s": tokens / statistics.median(t)}
        for name, t in times.items()
    }
    result["ratio"] = result["jax"]["tokens_per_s"] / result["transformers"]["tokens_per_s"]
    result["rows_identical"] = int(sum(np.array_equal(a, b) for a, b in zip(out["jax"], out["transformers"])))
    result["rows"] = _DECODE_BATCH.value
    return result


def main(argv):
    del argv
    import datetime

    import jax
    import torch
    import transformers

    results = {
        "date": datetime.date.today().isoformat(),
        "command": "python bench/decoder_only.py " + " ".join(sys.argv[1:]),
        "versions": {"jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__},
        "threads": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "sizes": {},
    }
    for size in _SIZES.value:
        with tempfile.TemporaryDirectory() as tmp:
            hf, model, params = make_models(size, pathlib.Path(tmp))
        decode = bench_decode(hf, model, params)
        train = bench_train(size, hf, model, params)
        results["sizes"][size] = {"train": train, "decode": decode}
        print(
            f"{size}: train real tokens/s dss_jax {train['jax']['real_tokens_per_s']:.0f} vs transformers "
            f"{train['transformers']['real_tokens_per_s']:.0f} ({train['ratio']:.2f}x; first loss "
            f"{train['first_loss']['jax']:.4f} vs {train['first_loss']['transformers']:.4f}); decode tokens/s "
            f"{decode['jax']['tokens_per_s']:.0f} vs {decode['transformers']['tokens_per_s']:.0f} "
            f"({decode['ratio']:.2f}x; {decode['rows_identical']}/{decode['rows']} rows identical)",
            flush=True,
        )
    pathlib.Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(_OUT.value).write_text(json.dumps(results, indent=1))
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
