r"""`make quickstart`: Distilling Step-by-Step end to end on the built-in synthetic task.

    python -m dss_jax.quickstart [--output_dir=quickstart_out] [--from_scratch] [--train_steps=N]
    python -m dss_jax.quickstart --family=decoder_only    # a decoder-only (Llama) student instead

1. generates the synthetic arithmetic dataset and its cached "teacher" rationales
   (the project's teacher cache format; nothing is downloaded),
2. trains the small T5 student with `python -m dss_jax.train --gin_file=quickstart.gin`
   (λ = 1: labels and rationales, 16 examples per step), starting from the pretrained
   student in pretrained/synthetic_tiny_cpu (or from scratch: --from_scratch), decoding
   the validation split every 200 steps and keeping the best checkpoints,
3. evaluates the checkpoint validation selects on the test split with
   `python -m dss_jax.eval` (STEPS='best'),
4. prints a results table (the student's accuracy; Distilling Step-by-Step and standard
   distillation as measured over 3 seeds with the same settings trained to convergence,
   at this run's examples, at about its compute and converged: the family's
   docs/results/quickstart_converged*/; the teacher's accuracy, trivial baselines, steps,
   time) and where the TensorBoard logs, checkpoints and predictions are.

The binaries run as subprocesses, exactly as a user would run them. Running it again
resumes the training run (or skips it when finished) and re-evaluates, replacing the
earlier evaluation (eval's --gin.OVERWRITE=True).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from typing import Optional

from absl import flags

import gin
from dss_jax import cli

# TensorFlow (the data pipeline) prints CUDA probing and oneDNN notices at import; a first
# run should show only the quickstart's own progress. Python errors still surface.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Quickstart:
    """One student family's quickstart: its gin file, the pretrained student it starts
    from (pretrained/README.md), and the results of its settings over 3 seeds trained to
    convergence (its gin/sweeps/ file)."""

    gin_file: str
    pretrained: str
    measured_dir: str
    student: str  # how the progress line names it


QUICKSTARTS = {
    "t5": Quickstart(
        "quickstart.gin",
        os.path.join("pretrained", "synthetic_tiny_cpu"),
        os.path.join("docs", "results", "quickstart_converged"),
        "a small T5",
    ),
    "decoder_only": Quickstart(
        "quickstart_decoder_only.gin",
        os.path.join("pretrained", "synthetic_decoder_only_tiny_cpu"),
        os.path.join("docs", "results", "quickstart_converged_decoder_only"),
        "a small decoder-only (Llama) student",
    ),
}
QUICKSTART_GIN = QUICKSTARTS["t5"].gin_file
PRETRAINED_STUDENT = QUICKSTARTS["t5"].pretrained
MEASURED_DIR = QUICKSTARTS["t5"].measured_dir
STARTS = {
    "pretrained": "from the pretrained student {pretrained}",
    "scratch": "from scratch",
    None: "from INITIAL_CHECKPOINT_PATH",
}
QUOTED_METHODS = (("dss_teacher", "Distilling Step-by-Step"), ("distill", "standard distillation"))
EXAMPLES_PER_STEP = 16  # the quickstart's BATCH_SIZE in examples


def _run(cmd: list[str], log_path: str, what: str) -> float:
    t0 = time.time()
    print(f"==> {what}  (log: {log_path})", flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if line.startswith("step "):  # the train binary's progress lines
                print("    " + line.rstrip(), flush=True)
        proc.wait()
    if proc.returncode:
        with open(log_path, errors="replace") as f:
            print(f.read()[-3000:], file=sys.stderr, flush=True)  # the log's end, then the one line
        raise cli.child_error(what, proc.returncode, log_path)
    return time.time() - t0


def main(argv):
    del argv
    if FLAGS.family not in QUICKSTARTS:
        raise cli.UserError(f"--family={FLAGS.family!r}: choose one of {', '.join(QUICKSTARTS)}")
    quick = QUICKSTARTS[FLAGS.family]
    out = os.path.abspath(FLAGS.output_dir)
    model_dir, eval_dir = os.path.join(out, "model"), os.path.join(out, "eval")
    os.makedirs(out, exist_ok=True)
    t_start = time.time()
    bindings = [*FLAGS.gin_bindings, *(["INITIAL_CHECKPOINT_PATH=None"] if FLAGS.from_scratch else [])]
    common = [f"--gin_bindings={b}" for b in bindings]
    steps, start, baselines = _read_config(bindings, quick)
    measured_steps, steps = steps, FLAGS.train_steps or steps
    starting = STARTS[start].format(pretrained=quick.pretrained)
    py = sys.executable
    train_s = _run(
        [
            py,
            "-m",
            "dss_jax.train",
            f"--gin_file={quick.gin_file}",
            f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.TRAIN_STEPS={steps}",
            *common,
        ],
        os.path.join(out, "train.log"),
        f"training {quick.student} {starting} for {steps} steps (Distilling Step-by-Step, λ = 1)",
    )
    eval_s = _run(
        [
            py,
            "-m",
            "dss_jax.eval",
            "--gin_file=runs/eval.gin",
            f"--gin_file={quick.gin_file}",
            f"--gin.CHECKPOINT_PATH='{model_dir}'",
            f"--gin.EVAL_OUTPUT_DIR='{eval_dir}'",
            "--gin.SPLIT='test'",
            "--gin.OVERWRITE=True",  # a second quickstart re-evaluates
            "--gin.STEPS='best'",
            *common,
        ],
        os.path.join(out, "eval.log"),
        "evaluating the student on the test split (greedy decoding)",
    )
    from dss_jax import checkpoints

    ((best, _),) = checkpoints.select_checkpoints(model_dir, "best")
    step_dir = os.path.join(eval_dir, f"step_{best}")
    with open(os.path.join(step_dir, "metrics.json")) as f:
        metrics = json.load(f)

    # The measured results hold for the quickstart's own settings only.
    matches = start == "pretrained" and not FLAGS.gin_bindings and steps == measured_steps
    quoted = _measured(steps * EXAMPLES_PER_STEP, _tokens_trained(model_dir), quick.measured_dir) if matches else {}
    rows = [
        (f"student accuracy (test; step {best}, the best on validation)", f"{100 * metrics['accuracy']:.1f}%"),
        *[
            (f"{name}, {reading}", value)
            for method, name in QUOTED_METHODS
            for reading, value in quoted.get(method, [("3 seeds", "not measured for these settings")])
        ],
        ("teacher accuracy (test, its cached labels)", _pct(metrics.get("teacher_accuracy"))),
        ("student agrees with the teacher", _pct(metrics.get("teacher_agreement"))),
        ("baseline: most common answer", _pct(baselines.get("majority_answer"))),
        ("baseline: first two numbers, best operation", _pct(baselines.get("first_two_numbers"))),
        ("test examples", f"{int(metrics['num_examples'])}"),
        ("train steps", f"{steps}"),
        ("train time (incl. data generation, compile)", f"{train_s:.0f}s"),
        ("eval time", f"{eval_s:.0f}s"),
        ("total", f"{time.time() - t_start:.0f}s"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\nDistilling Step-by-Step quickstart: results")
    print("-" * (width + 12))
    for k, v in rows:
        print(f"{k:<{width}}  {v:>8}")
    print("-" * (width + 12))
    if quoted:
        sweep = f"gin/sweeps/{os.path.basename(quick.measured_dir)}.gin"
        print(f"measured:        test accuracy, mean ± std over 3 seeds {starting}, {quick.measured_dir}")
        print(f"                 ({sweep}: these settings trained until validation")
        print("                 stopped improving; each reading scores the checkpoint validation selects within")
        print("                 it. Standard distillation: the same teacher labels and 16 examples per step, λ = 0)")
    print(f"checkpoints:     {model_dir}/checkpoint_*")
    print(f"TensorBoard:     tensorboard --logdir {out}")
    print(f"predictions:     {step_dir}/predictions.jsonl")
    print(f"metrics:         {step_dir}/metrics.json, {model_dir}/train/metrics.jsonl")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(
            {
                "metrics": metrics,
                "baselines": baselines,
                "start": start,
                "train_steps": steps,
                "train_seconds": train_s,
                "eval_seconds": eval_s,
            },
            f,
            indent=2,
        )


def _measured(
    examples: float, tokens: Optional[float], measured_dir: str = MEASURED_DIR
) -> dict[str, list[tuple[str, str]]]:
    """{method: [(reading, "mean ± std%")]} of the committed converged grid: at this run's
    examples, at the token budget nearest this run's real tokens, and converged. None
    measured (an installed package without docs/, a grid not run yet): {}."""
    import csv

    from dss_jax import results

    directory = os.path.join(REPO, measured_dir)
    if not os.path.isfile(os.path.join(directory, "budgets.csv")):
        return {}
    with open(os.path.join(directory, "results.csv")) as f:
        converged = [r for r in csv.DictReader(f) if r["method"] in dict(QUOTED_METHODS)]
    budgets = [r for r in results.read_budgets(os.path.join(directory, "budgets.csv")) if r["accuracy"] != ""]
    token_budgets = sorted({r["budget"] for r in budgets if r["budget_axis"] == "real_tokens"})
    nearest = min(token_budgets, key=lambda b: abs(math.log(b / tokens))) if tokens and token_budgets else None
    out: dict[str, list[tuple[str, str]]] = {}
    for method in dict(QUOTED_METHODS):
        mine = [r for r in converged if r["method"] == method]
        readings = []
        at_tokens = f"at {nearest / 1e6:g}M real tokens (this run: {tokens / 1e6:.2f}M)" if nearest else ""
        for reading, axis, budget in (
            (f"at this run's {examples:,.0f} examples", "examples", examples),
            (at_tokens, "real_tokens", nearest),
        ):
            rows = [r for r in budgets if r["method"] == method and r["budget_axis"] == axis and r["budget"] == budget]
            if rows:
                (g,) = results.aggregate([{**r, "accuracy": float(r["accuracy"])} for r in rows], "accuracy")
                readings.append((reading, f"{100 * g['mean']:.1f} ± {100 * g['std']:.1f}% (n={g['n']})"))
        if mine:
            (g,) = results.aggregate(
                [{**r, "fraction": float(r["fraction"]), "accuracy": float(r["accuracy"])} for r in mine], "accuracy"
            )
            steps = sum(int(r["selected_step"]) for r in mine) / len(mine)
            readings.append(
                ("trained to convergence", f"{100 * g['mean']:.1f} ± {100 * g['std']:.1f}% (best step {steps:.0f})")
            )
        out[method] = readings
    return out


def _tokens_trained(model_dir: str) -> Optional[float]:
    """The real tokens this run trained on (its last train record's running total)."""
    from dss_jax.metrics_writer import read_records
    from dss_jax.training import selection

    records = read_records(os.path.join(model_dir, "train", "metrics.jsonl"))
    return float(records[-1][selection.SEEN_TOKENS]) if records and selection.SEEN_TOKENS in records[-1] else None


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _read_config(gin_bindings: list[str], quick: Quickstart = QUICKSTARTS["t5"]) -> tuple[int, Optional[str], dict]:
    """`_settings`, and the trivial baselines on the dataset the quickstart generates
    (generating it here, so the train binary finds it ready)."""
    from dss_jax.data import synthetic
    from dss_jax.data.cache import read_cache

    steps, start = _settings(gin_bindings, quick)
    with gin.config_scope("dss_synthetic"):
        paths = synthetic.ensure_dataset()
    return steps, start, synthetic.baselines(read_cache(paths["train"]), read_cache(paths["test"]))


def _settings(gin_bindings: list[str], quick: Quickstart = QUICKSTARTS["t5"]) -> tuple[int, Optional[str]]:
    """TRAIN_STEPS of the quickstart config, and where it starts: 'pretrained' (the
    committed student), 'scratch', or None (another checkpoint, not measured)."""
    from dss_jax import gin_utils

    gin_utils.parse_gin([quick.gin_file], gin_bindings, ["."])
    steps = int(gin.query_parameter("TRAIN_STEPS/macro.value"))
    initial = gin.query_parameter("INITIAL_CHECKPOINT_PATH/macro.value")
    if initial is None:
        return steps, "scratch"
    if os.path.normpath(initial) != quick.pretrained:
        return steps, None
    if not os.path.isdir(initial):
        raise cli.UserError(
            f"the pretrained student {initial} is missing: run the quickstart from the root of a clone of the "
            "repository, or pass --from_scratch"
        )
    return steps, "pretrained"


def define_flags() -> None:
    """The binary's flags (defined when it runs, so that importing this module defines none)."""
    flags.DEFINE_string("output_dir", "quickstart_out", "Where the model, evaluation and logs go.")
    flags.DEFINE_integer("train_steps", None, "Override TRAIN_STEPS of gin/quickstart.gin.")
    flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings for both binaries.")
    flags.DEFINE_bool("from_scratch", False, "Train from random initialization instead of the pretrained student.")
    flags.DEFINE_string("family", "t5", f"The student family: {', '.join(QUICKSTARTS)}.")


if __name__ == "__main__":
    define_flags()
    cli.run(main, "quickstart")
