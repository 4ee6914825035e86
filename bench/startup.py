"""Start-up time of the binaries, this checkout against an earlier commit, side by side.

    python bench/startup.py --before=2638136 --repeats=3

Times, as a user would see them, the whole wall time of
  - `python -m dss_jax.train --gin_file=quickstart.gin --gin.TRAIN_STEPS=1` (imports,
    data, vocabulary from its cache, model init, one compiled step, one checkpoint);
  - `python -m dss_jax.eval --help`.
The earlier commit is checked out in a temporary git worktree and run with the same
interpreter (`python -m` from the worktree imports its dss_jax). Each side has its own
DSS_CACHE_DIR, filled by one untimed run (the quickstart data and vocabulary), so the
figures are start-up, not data generation. This checkout's train is timed twice: with
its compilation cache warm (what a rerun, a resume or the next sweep point sees) and
cold (an empty cache per run: the first run of a configuration). Rounds alternate the
commands so that every side sees the same machine load; the report gives medians and
ratios. The earlier commit runs with this checkout's installed packages: commits before
2026-12-02 write TensorBoard events with tensorboardX (`pip install tensorboardX`).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: pathlib.Path, env: dict[str, str], ok=(0,)) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in ok:
        raise SystemExit(f"{' '.join(cmd)} (in {cwd}) failed with exit {proc.returncode}:\n{proc.stdout[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the commit to compare with (a git revision)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    work = pathlib.Path(tempfile.mkdtemp(prefix="dss_startup_"))
    before = work / "before"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(before), args.before],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "PYTHONPATH")}
        sides = {"before": before, "after": REPO}
        env = {side: {**base, "DSS_CACHE_DIR": str(work / f"cache_{side}")} for side in sides}
        runs = iter(range(10**6))

        def train(side: str, compile_cache: str | None = None):
            e = dict(env[side])
            if compile_cache is not None:
                e["JAX_COMPILATION_CACHE_DIR"] = compile_cache
            return lambda: _run(
                [
                    sys.executable,
                    "-m",
                    "dss_jax.train",
                    "--gin_file=gin/quickstart.gin",
                    "--gin.TRAIN_STEPS=1",
                    f"--gin.MODEL_DIR='{work / f'model_{next(runs)}'}'",
                ],
                sides[side],
                e,
            )  # a new MODEL_DIR per run: a fresh start, not a resume

        def fresh_cache_train():  # an empty compilation cache each time
            return train("after", tempfile.mkdtemp(dir=work, prefix="xla_"))()

        def eval_help(side: str):
            # absl's --help exits 1 in older commits, 0 since cli.run
            return lambda: _run([sys.executable, "-m", "dss_jax.eval", "--help"], sides[side], env[side], ok=(0, 1))

        for side in sides:  # untimed: data, vocabulary, and (after) the compilation cache
            train(side)()
        commands = {
            "train, before": train("before"),
            "train, after (compilation cache warm)": train("after"),
            "train, after (compilation cache empty)": fresh_cache_train,
            "eval --help, before": eval_help("before"),
            "eval --help, after": eval_help("after"),
        }
        times = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, fn in commands.items():
                times[name].append(fn())
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(before)], check=False)

    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"before = {args.before}, after = this checkout; median of {args.repeats} alternating rounds")
    print("| command | before, s | after, s | after / before |")
    print("|---------|----------:|---------:|---------------:|")
    for label, b, a in [
        (
            "train --gin.TRAIN_STEPS=1 (compilation cache warm)",
            "train, before",
            "train, after (compilation cache warm)",
        ),
        (
            "train --gin.TRAIN_STEPS=1 (compilation cache empty)",
            "train, before",
            "train, after (compilation cache empty)",
        ),
        ("eval --help", "eval --help, before", "eval --help, after"),
    ]:
        print(f"| {label} | {med[b]:.1f} | {med[a]:.1f} | {med[a] / med[b]:.2f} |")
    print("all times, s:", {name: [round(x, 1) for x in t] for name, t in times.items()})


if __name__ == "__main__":
    main()
