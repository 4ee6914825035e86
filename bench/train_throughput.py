r"""Training throughput: the reference's two-pass PyTorch step vs dss_jax's packed step.

    python bench/train_throughput.py --size small --datasets svamp,cqa
    python bench/train_throughput.py --size tiny --steps 2 --warmup 1 --examples_per_step 4   # smoke

Both implementations train the same T5 (same config, the same initial weights: dss_jax's
seeded initialisation, exported with dss_jax.model.hf_convert and loaded by the reference
with `T5ForConditionalGeneration.from_pretrained`, as it loads google/t5-v1_1-*) on the
same N examples per step (SVAMP / CQA train records with their PaLM rationales, tokenized
once by a SentencePiece vocabulary trained on the split), with AdamW (lr 5e-5, linear
decay, gradient clipping at 1.0, as the reference's HF Trainer), dropout on, in the same
precision (float32 on CPU):

  (a) reference (bench/reference_t5.py): per step two forward/backward passes, the
      `predict:` batch and the `explain:` batch, each padded to its own longest sequence;
  (b) dss_jax: `Trainer.train_step` on the rows that `convert_numpy(pack=True)` packs the
      same N examples' 2N segments into (rows of the gin file's packed lengths; every step
      padded to the same number of rows so that one compiled step serves them all).

Throughput is REAL tokens per second: the non-padding input and target tokens of the N
examples, counted once (the script checks both sides count the same number). Steps
alternate A, B, A, B in one process; warm-up steps (compilation, optimiser-state
allocation) are excluded; the figure is the median step time. Batches are prepared
before timing, so both sides are timed on the model step alone (forward, backward,
clipping, optimiser update).

Threads: both sides get the same CPU set (`--threads`, default all schedulable cores):
the process is pinned to it before torch and jax load, torch.set_num_threads(T), and
XLA's CPU thread pool is sized by the schedulable cores. CPU time / wall time of each
side's steps is printed, so the thread use is visible.

Peak memory (`--memory`, CPU): each side runs alone in a fresh subprocess; the figure is
the peak resident set size during its steady-state training steps minus the resident
size before it built its model (after imports and data): parameters, gradients,
optimiser state and activations. The peak is measured after warm-up (XLA's compilation
excluded: /proc/self/clear_refs resets the high-water mark, after malloc_trim). For
dss_jax the compiled step's own accounting (`memory_analysis`: arguments + outputs +
temporaries - aliased) is printed as well. On GPU: peak device bytes (jax memory_stats,
torch.cuda.max_memory_allocated).

Model FLOPs (bench/flops.py: per segment, real tokens only) give achieved TFLOP/s and,
with a known peak (`--peak_tflops` or the GPU's data sheet), MFU.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

BENCH_DIR = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One XLA CPU device: the benchmark is a single-device step (tests' 8 virtual devices
# would split the thread pool).
os.environ["XLA_FLAGS"] = " ".join(
    f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f
)

from absl import app, flags  # noqa: E402
from train_setup import (  # noqa: E402
    initial_params,
    model_config,
    pack_steps,
    packed_real_tokens,
    pin_threads,
    segments_of,
    step_sets,
)

_DATASETS = flags.DEFINE_list("datasets", ["svamp", "cqa"], "svamp, cqa (paper files) or synthetic.")
_SIZE = flags.DEFINE_enum("size", "small", ["tiny", "small", "base", "large", "xl"], "T5 v1.1 shape.")
_N = flags.DEFINE_integer("examples_per_step", 16, "Paired examples per optimiser step (both sides).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per implementation (median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps per implementation first (compilation).")
_IMPL = flags.DEFINE_enum("impl", "both", ["both", "jax", "ref"], "Which implementations to run.")
_DTYPE = flags.DEFINE_enum(
    "dtype",
    "float32",
    ["float32", "bfloat16"],
    "Compute dtype (master weights stay float32; torch uses autocast for bfloat16).",
)
_THREADS = flags.DEFINE_integer("threads", 0, "CPU threads for both sides; 0: all schedulable cores.")
_MEMORY = flags.DEFINE_bool("memory", True, "Also measure peak memory of each side (separate subprocesses).")
_ENC = flags.DEFINE_integer("pack_encoder_length", 0, "Packed encoder row length; 0: the gin task file's.")
_DEC = flags.DEFINE_integer("pack_decoder_length", 0, "Packed decoder row length; 0: the gin task file's.")
_LAMBDA = flags.DEFINE_float(
    "rationale_weight", 1.0, "λ of dss_jax; the reference gets alpha = 1/(1+λ) (0.5 for λ=1, its default)."
)
_VOCAB = flags.DEFINE_integer("vocab_size", 0, "Model vocabulary; 0: 32128 (T5's) or, for tiny, the trained one.")
_DROPOUT = flags.DEFINE_float("dropout_rate", 0.1, "Dropout of both models (T5 v1.1: 0.1).")
_DROPOUT_RNG = flags.DEFINE_enum(
    "dropout_rng",
    "threefry",
    ["threefry", "rbg", "unsafe_rbg", "xla_threefry"],
    "dss_jax's dropout random bits (train.dropout_rng).",
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "The paper's files (default $DSS_PALM_DIR or ../shared/data/dss_palm)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Example order and weights.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s per chip for MFU; 0: from the GPU's name.")
_JSON = flags.DEFINE_string("json_out", None, "Append one JSON line per dataset to this file.")
_SAME_ROWS = flags.DEFINE_bool(
    "same_row_count",
    False,
    "dss_jax: pad every step to the largest row count (one compilation) instead "
    "of compiling once per distinct row count.",
)
_ROWS_PER_MICRO = flags.DEFINE_integer(
    "rows_per_microbatch",
    0,
    "dss_jax: accumulate each step's gradient over microbatches of this many packed rows "
    "(train.num_microbatches = rows / this; a step's row count is padded up to a multiple); "
    "0: the whole step in one pass.",
)
_PROFILE = flags.DEFINE_string(
    "profile_dir",
    None,
    "dss_jax: after the timed steps, trace one more step with the JAX profiler "
    "into this folder (with a Perfetto trace, perfetto_trace.json.gz).",
)
_PROBE = flags.DEFINE_enum("memory_probe", None, ["jax", "ref"], "Internal: run one side alone, print its memory.")


# ----------------------------------------------------------------------------------------
# Set-up shared by both sides
# ----------------------------------------------------------------------------------------


class Setup:
    """Data, config and weights of one dataset, identical for both sides."""

    def __init__(self, dataset: str, count: int):
        import train_data

        (self.examples, self.lengths, gin_rows, trained_vocab, self.dataset, self.source) = train_data.load_tokenized(
            dataset, count, _SEED.value, _DATA_DIR.value
        )
        self.rows_shape = (_ENC.value or gin_rows[0], _DEC.value or gin_rows[1])
        self.config = model_config(_SIZE.value, _VOCAB.value, trained_vocab, _DROPOUT.value, _DTYPE.value)
        self.trained_vocab = trained_vocab
        self.sets = step_sets(self.examples, _N.value, count // _N.value)

    def initial_params(self):
        return initial_params(self.config, _SEED.value)


# ----------------------------------------------------------------------------------------
# The two sides
# ----------------------------------------------------------------------------------------


class RefSide:
    name = "reference (HF PyTorch, 2 passes)"

    def __init__(self, setup: Setup, params, total_steps: int):
        import reference_t5
        import torch  # its start-up memory is not the training step's

        self.torch = torch
        self.device = "cuda" if _on_gpu() and torch.cuda.is_available() else "cpu"
        autocast = torch.bfloat16 if _DTYPE.value == "bfloat16" else None
        model = reference_t5.hf_model(setup.config, params)
        self.step_fn = reference_t5.ReferenceStep(
            model,
            alpha=1.0 / (1.0 + _LAMBDA.value),
            total_steps=total_steps,
            device=self.device,
            autocast_dtype=autocast,
        )
        self.batches = [self.step_fn.to_device(reference_t5.collate(s)) for s in setup.sets]
        self.real = [reference_t5.real_tokens(b) for b in self.batches]
        self.computed = [reference_t5.padded_tokens(b) for b in self.batches]

    def run(self, i: int) -> float:
        loss = self.step_fn.step(self.batches[i])
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return float(loss)

    def peak_device_bytes(self):
        return self.torch.cuda.max_memory_allocated() if self.device == "cuda" else None


class JaxSide:
    name = "dss_jax (packed, 1 pass)"

    def __init__(self, setup: Setup, params, total_steps: int):
        import jax

        from dss_jax import losses, optimizers, partitioning
        from dss_jax.model.encoder_decoder import EncoderDecoderModel
        from dss_jax.training.step import Trainer

        self.jax = jax
        device = jax.devices()[0]

        def make_trainer(microbatches: int):
            return Trainer(
                EncoderDecoderModel(setup.config),
                loss_config=losses.LossConfig(rationale_weight=_LAMBDA.value),
                optimizer_config=optimizers.OptimizerConfig(name="adamw", learning_rate=5e-5, clip_grad_norm=1.0),
                total_steps=total_steps,
                num_microbatches=microbatches,
                mesh=partitioning.make_mesh(1, [device]),
                seed=_SEED.value,
                dropout_rng=_DROPOUT_RNG.value,
            )

        per_micro = _ROWS_PER_MICRO.value
        rows, self.rows = pack_steps(setup.sets, setup.lengths, setup.rows_shape, _SAME_ROWS.value, per_micro)
        # One trainer per microbatch count (they share the state): a step of R rows runs
        # R / rows_per_microbatch microbatches.
        self.microbatches = [r // per_micro if per_micro else 1 for r in self.rows]
        self.trainers = {m: make_trainer(m) for m in sorted(set(self.microbatches))}
        self.trainer = self.trainers[self.microbatches[0]]  # the first step's
        self.state = self.trainer.state_from_params(params)
        self.real = [packed_real_tokens(r) for r in rows]
        self.computed = [r["encoder_input_tokens"].size + r["decoder_target_tokens"].size for r in rows]
        self.batches = [self.trainer.global_batch(r) for r in rows]

    def run(self, i: int) -> float:
        trainer = self.trainers[self.microbatches[i]]
        self.state, metrics = trainer.train_step(self.state, self.batches[i])
        return float(self.jax.block_until_ready(metrics["loss"]))

    def compile_all(self, first_timed: int) -> None:
        """Compiles the step for every row count the timed steps use (a step on the first
        set of each count; untimed, like the warm-up)."""
        seen = set(self.rows[:first_timed])
        for i in range(first_timed, len(self.rows)):
            if self.rows[i] not in seen:
                seen.add(self.rows[i])
                self.run(i)

    def compiled(self):
        return self.trainer.compiled_train_step(self.state, self.batches[0])

    def peak_device_bytes(self):
        stats = self.jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use")


def _on_gpu() -> bool:
    import jax

    return jax.default_backend() == "gpu"


# ----------------------------------------------------------------------------------------
# Memory (CPU): one side alone in a subprocess
# ----------------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _trim():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def memory_probe(side: str, dataset: str) -> dict:
    count = (_WARMUP.value + _STEPS.value) * _N.value
    setup = Setup(dataset, count)
    params = setup.initial_params()
    if side == "ref":
        import torch  # noqa: F401  (its start-up memory is not the training step's)
    _trim()
    baseline = _status_kb("VmRSS")
    cls = JaxSide if side == "jax" else RefSide
    impl = cls(setup, params, total_steps=len(setup.sets))
    out = {}
    if side == "jax":
        analysis = impl.compiled().memory_analysis()
        if analysis is not None:
            out["xla_step_bytes"] = int(
                analysis.argument_size_in_bytes
                + analysis.output_size_in_bytes
                + analysis.temp_size_in_bytes
                - analysis.alias_size_in_bytes
            )
            out["xla_temp_bytes"] = int(analysis.temp_size_in_bytes)
    for i in range(_WARMUP.value):
        impl.run(i)
    if side == "jax":
        impl.compile_all(_WARMUP.value)
    _trim()
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    for i in range(_WARMUP.value, len(setup.sets)):
        impl.run(i)
    out.update(
        peak_rss_delta_bytes=(_status_kb("VmHWM") - baseline) * 1024,
        hwm_reset=reset,
        baseline_rss_bytes=baseline * 1024,
    )
    return out


def run_memory_probe(side: str, dataset: str) -> dict:
    args = [
        sys.executable,
        str(pathlib.Path(__file__).resolve()),
        f"--memory_probe={side}",
        f"--datasets={dataset}",
        f"--size={_SIZE.value}",
        f"--examples_per_step={_N.value}",
        f"--steps={min(_STEPS.value, 2)}",
        f"--warmup={_WARMUP.value}",
        f"--dtype={_DTYPE.value}",
        f"--threads={_THREADS.value}",
        f"--pack_encoder_length={_ENC.value}",
        f"--pack_decoder_length={_DEC.value}",
        f"--rationale_weight={_LAMBDA.value}",
        f"--vocab_size={_VOCAB.value}",
        f"--same_row_count={_SAME_ROWS.value}",
        f"--dropout_rate={_DROPOUT.value}",
        f"--seed={_SEED.value}",
        f"--dropout_rng={_DROPOUT_RNG.value}",
        f"--rows_per_microbatch={_ROWS_PER_MICRO.value}",
    ]
    if _DATA_DIR.value:
        args.append(f"--data_dir={_DATA_DIR.value}")
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"memory probe {side} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------
# The measurement
# ----------------------------------------------------------------------------------------


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def measure(dataset: str, threads: int) -> dict:
    import flops
    import jax

    count = (_WARMUP.value + _STEPS.value) * _N.value
    clock = time.perf_counter()

    def phase(what: str) -> None:  # where the set-up time goes (a big model on a fresh machine)
        nonlocal clock
        now = time.perf_counter()
        print(f"[bench] {what}: {now - clock:.1f} s", flush=True)
        clock = now

    setup = Setup(dataset, count)
    phase("data")
    params = setup.initial_params()
    phase("initial weights")
    total = len(setup.sets)
    sides = {}
    if _IMPL.value in ("both", "ref"):
        sides["ref"] = RefSide(setup, params, total)
        phase("reference model and batches")
    if _IMPL.value in ("both", "jax"):
        sides["jax"] = JaxSide(setup, params, total)
        phase("dss_jax state and batches")
    if len(sides) == 2 and sides["ref"].real != sides["jax"].real:
        raise AssertionError(f"real token counts differ: reference {sides['ref'].real}, dss_jax {sides['jax'].real}")
    real = next(iter(sides.values())).real

    losses = {k: [] for k in sides}
    t0 = time.perf_counter()
    for i in range(_WARMUP.value):  # compilation, allocation of the optimiser state
        for key, side in sides.items():
            losses[key].append(side.run(i))
            phase(f"warm-up step {i} of {key}")
    if "jax" in sides:
        sides["jax"].compile_all(_WARMUP.value)
    warmup_s = time.perf_counter() - t0

    times = {k: [] for k in sides}
    cpu = {k: 0.0 for k in sides}
    for i in range(_WARMUP.value, total):
        for key, side in sides.items():  # A, B, A, B, ...
            c, t = _cpu_seconds(), time.perf_counter()
            losses[key].append(side.run(i))
            times[key].append(time.perf_counter() - t)
            cpu[key] += _cpu_seconds() - c

    if _PROFILE.value and "jax" in sides:  # untimed: the profiler's own cost stays out of the figures
        try:
            with jax.profiler.trace(_PROFILE.value, create_perfetto_trace=True):
                sides["jax"].run(total - 1)
        except Exception as e:  # a profiler that cannot start must not cost the figures
            print(f"[bench] profiling failed, figures kept: {type(e).__name__}: {e}", flush=True)

    timed_real = real[_WARMUP.value :]
    step_flops = [flops.train_flops(setup.config, segments_of(s)) for s in setup.sets[_WARMUP.value :]]
    result = {
        "dataset": setup.dataset,
        "source": setup.source,
        "size": _SIZE.value,
        "dtype": _DTYPE.value,
        "examples_per_step": _N.value,
        "timed_steps": _STEPS.value,
        "warmup_steps": _WARMUP.value,
        "rows_per_microbatch": _ROWS_PER_MICRO.value,
        "warmup_s": round(warmup_s, 2),
        "real_tokens_per_step": round(statistics.mean(timed_real), 1),
        "model_tflops_per_step": round(statistics.mean(step_flops) / 1e12, 4),
        "threads": threads,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "vocab": {"trained_pieces": setup.trained_vocab, "model_vocab_size": setup.config.vocab_size},
    }
    peak = _PEAK.value or (flops.peak_tflops(jax.devices()[0].device_kind) if jax.default_backend() != "cpu" else None)
    for key, side in sides.items():
        median = statistics.median(times[key])
        tokens_per_s = statistics.median([r / t for r, t in zip(timed_real, times[key])])
        entry = {
            "name": side.name,
            "step_s": [round(t, 4) for t in times[key]],
            "median_step_s": round(median, 4),
            "real_tokens_per_s": round(tokens_per_s, 1),
            "padding_efficiency": round(sum(side.real[_WARMUP.value :]) / sum(side.computed[_WARMUP.value :]), 4),
            "cpu_utilisation": round(cpu[key] / sum(times[key]), 2),
            "model_tflops_per_s": round(statistics.median([f / t for f, t in zip(step_flops, times[key])]) / 1e12, 4),
            "losses": [round(x, 4) for x in losses[key]],
        }
        if peak:
            entry["mfu"] = round(statistics.median([flops.mfu(f, t, peak) for f, t in zip(step_flops, times[key])]), 4)
            entry["peak_tflops"] = peak
        if jax.default_backend() != "cpu":
            entry["peak_device_bytes"] = side.peak_device_bytes()
        if key == "jax":
            entry["rows_per_step"] = side.rows[_WARMUP.value :]
            entry["microbatches_per_step"] = side.microbatches[_WARMUP.value :]
            entry["row_lengths"] = list(setup.rows_shape)
        result[key] = entry
    if len(sides) == 2:
        result["speedup"] = round(result["jax"]["real_tokens_per_s"] / result["ref"]["real_tokens_per_s"], 3)
    del sides
    gc.collect()
    if _MEMORY.value and jax.default_backend() == "cpu":
        for key in ("ref", "jax"):
            if key in result:
                result[key]["memory"] = run_memory_probe(key, dataset)
    return result


def report(r: dict) -> str:
    lines = [
        f"== {r['dataset']} | T5 v1.1 {r['size']} {r['dtype']} | {r['examples_per_step']} examples/step, "
        f"{r['real_tokens_per_step']:.0f} real tokens/step | {r['threads']} threads | "
        f"median of {r['timed_steps']} steps | load {r['load_avg_1m']}"
    ]
    for key in ("ref", "jax"):
        if key not in r:
            continue
        e = r[key]
        line = (
            f"  {e['name']:<34} step {e['median_step_s']:8.3f} s   {e['real_tokens_per_s']:9.1f} real tok/s   "
            f"padding eff {e['padding_efficiency']:.0%}   {e['model_tflops_per_s'] * 1e3:8.1f} GFLOP/s   "
            f"cpu x{e['cpu_utilisation']}"
        )
        if "mfu" in e:
            line += f"   MFU {e['mfu']:.1%}"
        if "memory" in e:
            m = e["memory"]
            line += f"   peak +{m['peak_rss_delta_bytes'] / 2**20:.0f} MiB RSS"
            if "xla_step_bytes" in m:
                line += f" (XLA step {m['xla_step_bytes'] / 2**20:.0f} MiB)"
        if "peak_device_bytes" in e and e["peak_device_bytes"]:
            line += f"   peak device {e['peak_device_bytes'] / 2**30:.2f} GiB"
        lines.append(line)
    if "speedup" in r:
        lines.append(f"  dss_jax / reference real tokens/s: {r['speedup']:.2f}x")
    return "\n".join(lines)


def main(argv):
    del argv
    threads = pin_threads(_THREADS.value)
    try:
        import torch
    except ImportError:  # a jax-only run (e.g. a GPU box without torch)
        if _IMPL.value != "jax" or _PROBE.value == "ref":
            raise
    else:
        torch.set_num_threads(threads)
    if _PROBE.value:
        print(json.dumps(memory_probe(_PROBE.value, _DATASETS.value[0])), flush=True)
        return
    for dataset in _DATASETS.value:
        result = measure(dataset, threads)
        print(report(result), flush=True)
        print(json.dumps(result), flush=True)
        if _JSON.value:
            with open(_JSON.value, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    app.run(main)
