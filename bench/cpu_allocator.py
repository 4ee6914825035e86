"""Training on CPU with glibc's default malloc against settings that keep freed memory.

    python bench/cpu_allocator.py --steps=300 --rounds=2

XLA's CPU runtime allocates each step's temporary buffers with malloc and frees them
after the step. With glibc's defaults, large blocks come from fresh mmaps (and the worker
threads' arenas return theirs), so every step faults in and zeroes new pages; where a
page fault is expensive (a virtual machine inside another) the kernel's share of a run
grows. This times `python -m dss_jax.train --gin_file=quickstart.gin` (the quickstart's
student and batch, decoding validation every EVAL_PERIOD steps) for --steps steps, once
per setting per round, the settings alternating so that both see the same load:

  - default: the environment as it is, without GLIBC_TUNABLES;
  - keep_memory: GLIBC_TUNABLES=%s
    (one arena, no mmap for large blocks, no trimming, transparent huge pages).

It reports, per setting, the median wall time, the training's own steps per second (the
mean of the logged records after the first, so compilation is not in it), the user and
kernel CPU seconds and the page faults of the whole process, and the ratios. It also
compares every run's train/metrics.jsonl, timings aside: an allocator setting must not
change a single loss.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
KEEP_MEMORY = ":".join(
    [
        "glibc.malloc.arena_max=1",
        "glibc.malloc.mmap_max=0",
        "glibc.malloc.trim_threshold=4294967295",
        "glibc.malloc.hugetlb=1",
    ]
)
__doc__ = __doc__ % KEEP_MEMORY
TIMINGS = ("steps_per_second", "real_tokens_per_second")


def _train(model_dir: pathlib.Path, steps: int, eval_period: int, env: dict[str, str]) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "dss_jax.train",
        "--gin_file=quickstart.gin",
        f"--gin.TRAIN_STEPS={steps}",
        f"--gin.EVAL_PERIOD={eval_period}",
        "--gin.train.log_period=50",
        f"--gin.MODEL_DIR='{model_dir}'",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit {proc.returncode}:\n{proc.stdout[-3000:]}")
    records = [json.loads(line) for line in (model_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    return {
        "wall": wall,
        "steps_per_second": statistics.mean(r["steps_per_second"] for r in records[1:]),
        "user": after.ru_utime - before.ru_utime,
        "sys": after.ru_stime - before.ru_stime,
        "faults": after.ru_minflt - before.ru_minflt,
        "metrics": [{k: v for k, v in r.items() if k not in TIMINGS} for r in records],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps per run")
    parser.add_argument("--eval_period", type=int, default=100, help="validation decoding every this many steps")
    parser.add_argument("--rounds", type=int, default=2, help="runs per setting, alternating")
    args = parser.parse_args()
    if args.steps < 100 or args.rounds < 1:
        parser.error("--steps must be at least 100 (two logged records) and --rounds at least 1")

    base = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    settings = {"default": base, "keep_memory": {**base, "GLIBC_TUNABLES": KEEP_MEMORY}}
    results: dict[str, list[dict]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory(prefix="cpu_allocator_") as tmp:
        work = pathlib.Path(tmp)
        # One untimed run fills the data and vocabulary caches both settings then read.
        _train(work / "warmup", 100, args.eval_period, base)
        for round_ in range(args.rounds):
            for name, env in settings.items():
                run = _train(work / f"{name}_{round_}", args.steps, args.eval_period, env)
                results[name].append(run)
                print(
                    f"round {round_} {name:<11} wall {run['wall']:6.1f} s | {run['steps_per_second']:5.2f} steps/s | "
                    f"user {run['user']:6.1f} s, kernel {run['sys']:6.1f} s | {run['faults'] / 1e6:5.2f} M faults",
                    flush=True,
                )

    reference = results["default"][0]["metrics"]
    same = all(run["metrics"] == reference for runs in results.values() for run in runs)
    print(f"\n{args.steps} steps of quickstart.gin, {args.rounds} round(s), medians:\n")
    print("| setting | wall | steps/s (training) | user CPU | kernel CPU | kernel share | page faults |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    medians = {}
    for name, runs in results.items():
        m = {k: statistics.median(r[k] for r in runs) for k in ("wall", "steps_per_second", "user", "sys", "faults")}
        medians[name] = m
        print(
            f"| {name} | {m['wall']:.1f} s | {m['steps_per_second']:.2f} | {m['user']:.1f} s | {m['sys']:.1f} s | "
            f"{m['sys'] / (m['user'] + m['sys']):.0%} | {m['faults'] / 1e6:.2f} M |"
        )
    d, k = medians["default"], medians["keep_memory"]
    print(
        f"\nkeep_memory / default: wall {k['wall'] / d['wall']:.2f}x, "
        f"training steps/s {k['steps_per_second'] / d['steps_per_second']:.2f}x"
    )
    print(f"train/metrics.jsonl, timings aside, identical in every run: {'yes' if same else 'NO'}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
