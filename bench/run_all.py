r"""`make bench`: every benchmark script in turn, with modest sizes, and their figures.

    python bench/run_all.py                  # the figures BENCHMARKS.md quotes (CPU: ~30-60 min)
    python bench/run_all.py --quick          # tiny sizes, a few steps: checks every script runs
    python bench/run_all.py --only train_throughput,decode_throughput

Each script runs in its own process (its own JAX/torch thread pools and compilation
caches), its output is streamed, and a script that fails does not stop the others; the
exit status is non-zero when any failed. A script that is not in this checkout (e.g.
bench/decode_throughput.py before its branch is merged) is reported as skipped. Result
files go to --out_dir (default bench/results).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
from typing import NamedTuple

from absl import app, flags

BENCH_DIR = pathlib.Path(__file__).resolve().parent

_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes and few steps (a smoke run, not figures).")
_ONLY = flags.DEFINE_list("only", [], "Run only these benchmarks (names below); default all.")
_OUT_DIR = flags.DEFINE_string("out_dir", str(BENCH_DIR / "results"), "Where result files go.")


class Bench(NamedTuple):
    name: str
    full: tuple[str, ...]  # arguments for the figures
    quick: tuple[str, ...]  # arguments for --quick


def benches(out_dir: str) -> list[Bench]:
    train_json = os.path.join(out_dir, "train_throughput.jsonl")
    return [
        Bench("input_pipeline", ("--datasets=svamp,cqa",), ("--datasets=svamp", "--repeats=1")),
        Bench(
            "train_throughput",
            # dss_jax with its CPU settings (BENCHMARKS.md): microbatches of 2 packed rows,
            # dropout bits from XLA's ThreeFry generator.
            (
                "--size=small",
                "--datasets=svamp,cqa",
                "--examples_per_step=32",
                "--steps=5",
                "--warmup=1",
                "--rows_per_microbatch=2",
                "--dropout_rng=xla_threefry",
                f"--json_out={train_json}",
            ),
            (
                "--size=tiny",
                "--datasets=svamp",
                "--examples_per_step=4",
                "--steps=2",
                "--warmup=1",
                "--nomemory",
                "--rows_per_microbatch=1",
                "--dropout_rng=xla_threefry",
            ),
        ),
        Bench(
            "decode_throughput",
            ("--sizes=tiny,small", f"--out_dir={out_dir}"),
            ("--sizes=tiny", "--repeats=1", "--batch_size=4", "--max_new_tokens=4", f"--out_dir={out_dir}"),
        ),
        Bench(
            "decoder_only",
            (f"--out={os.path.join(out_dir, 'decoder_only.json')}",),
            (
                "--sizes=tiny",
                "--steps=1",
                "--repeats=1",
                "--examples_per_step=2",
                "--decode_batch=2",
                "--new_tokens=4",
                f"--out={os.path.join(out_dir, 'decoder_only.json')}",
            ),
        ),
        Bench(
            "gemm_ceiling",
            (f"--json_out={os.path.join(out_dir, 'gemm_ceiling.jsonl')}",),
            ("--tokens=128", "--repeats=1", "--dtypes=float32"),
        ),
        Bench("cpu_allocator", ("--steps=300", "--rounds=2"), ("--steps=100", "--rounds=1")),
        Bench(
            "annotate_concurrency",
            (f"--out_dir={out_dir}",),
            (f"--out_dir={out_dir}", "--workers=1,4", "--rounds=2", "--latency=0.05"),
        ),
    ]


def run(bench: Bench, quick: bool) -> tuple[str, float]:
    script = BENCH_DIR / f"{bench.name}.py"
    if not script.is_file():
        print(f"--- {bench.name}: skipped ({script} is not in this checkout)", flush=True)
        return "skipped", 0.0
    args = [sys.executable, str(script), *(bench.quick if quick else bench.full)]
    print(f"--- {bench.name}: {' '.join(args[1:])}", flush=True)
    start = time.perf_counter()
    # Output streams straight through; TensorFlow/XLA start-up chatter is silenced.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    code = subprocess.call(args, env=env, cwd=BENCH_DIR.parent)
    return ("ok" if code == 0 else f"failed (exit {code})"), time.perf_counter() - start


def main(argv):
    del argv
    os.makedirs(_OUT_DIR.value, exist_ok=True)
    selected = benches(_OUT_DIR.value)
    known = [b.name for b in selected]
    unknown = sorted(set(_ONLY.value) - set(known))
    if unknown:
        raise app.UsageError(f"--only: unknown benchmarks {unknown}; known: {known}")
    if _ONLY.value:
        selected = [b for b in selected if b.name in _ONLY.value]
    outcomes = []
    for bench in selected:
        outcomes.append((bench.name, *run(bench, _QUICK.value)))
    print("--- summary", flush=True)
    for name, outcome, seconds in outcomes:
        print(f"  {name:<22} {outcome:<18} {seconds:7.1f} s")
    if any(o.startswith("failed") for _, o, _ in outcomes):
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
