r"""`make quickstart`: Distilling Step-by-Step end to end on the built-in synthetic task.

    python -m dss_jax.quickstart [--output_dir=quickstart_out] [--from_scratch] [--train_steps=N]

1. generates the synthetic arithmetic dataset and its cached "teacher" rationales
   (the project's teacher cache format; nothing is downloaded),
2. trains the small T5 student with `python -m dss_jax.train --gin_file=quickstart.gin`
   (λ = 1: labels and rationales, 16 examples per step), starting from the pretrained
   student in pretrained/synthetic_tiny_cpu (or from scratch: --from_scratch),
3. evaluates it on the test split with `python -m dss_jax.eval`,
4. prints a results table (student accuracy; Distilling Step-by-Step and standard
   distillation as measured over 3 seeds with the same settings, docs/results/quickstart/;
   the teacher's accuracy, trivial baselines, steps, time) and where the TensorBoard
   logs, checkpoints and predictions are.

The binaries run as subprocesses, exactly as a user would run them. Running it again
resumes the training run (or skips it when finished) and re-evaluates, replacing the
earlier evaluation (eval's --gin.OVERWRITE=True).
"""

from __future__ import annotations

import json
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
QUICKSTART_GIN = "quickstart.gin"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The student quickstart.gin starts from (span-corruption pretrained: pretrained/README.md)
# and the results of the quickstart's settings over 3 seeds (gin/sweeps/quickstart.gin).
PRETRAINED_STUDENT = os.path.join("pretrained", "synthetic_tiny_cpu")
MEASURED_RESULTS = os.path.join("docs", "results", "quickstart", "results.csv")
STARTS = {
    "pretrained": f"from the pretrained student {PRETRAINED_STUDENT}",
    "scratch": "from scratch",
    None: "from INITIAL_CHECKPOINT_PATH",
}
QUOTED_METHODS = (
    ("dss_teacher", "Distilling Step-by-Step, 3 seeds (measured)"),
    ("distill", "standard distillation, 3 seeds (measured)"),
)


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
    out = os.path.abspath(FLAGS.output_dir)
    model_dir, eval_dir = os.path.join(out, "model"), os.path.join(out, "eval")
    os.makedirs(out, exist_ok=True)
    t_start = time.time()
    bindings = [*FLAGS.gin_bindings, *(["INITIAL_CHECKPOINT_PATH=None"] if FLAGS.from_scratch else [])]
    common = [f"--gin_bindings={b}" for b in bindings]
    steps, start, baselines = _read_config(bindings)
    measured_steps, steps = steps, FLAGS.train_steps or steps
    py = sys.executable
    train_s = _run(
        [
            py,
            "-m",
            "dss_jax.train",
            f"--gin_file={QUICKSTART_GIN}",
            f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.TRAIN_STEPS={steps}",
            *common,
        ],
        os.path.join(out, "train.log"),
        f"training a small T5 {STARTS[start]} for {steps} steps (Distilling Step-by-Step, λ = 1)",
    )
    eval_s = _run(
        [
            py,
            "-m",
            "dss_jax.eval",
            "--gin_file=runs/eval.gin",
            f"--gin_file={QUICKSTART_GIN}",
            f"--gin.CHECKPOINT_PATH='{model_dir}'",
            f"--gin.EVAL_OUTPUT_DIR='{eval_dir}'",
            "--gin.SPLIT='test'",
            "--gin.OVERWRITE=True",  # a second quickstart re-evaluates
            *common,
        ],
        os.path.join(out, "eval.log"),
        "evaluating the student on the test split (greedy decoding)",
    )
    step_dir = os.path.join(eval_dir, f"step_{steps}")
    with open(os.path.join(step_dir, "metrics.json")) as f:
        metrics = json.load(f)

    # The measured results hold for the quickstart's own settings only.
    quoted = _measured(start) if start and not FLAGS.gin_bindings and steps == measured_steps else {}
    rows = [
        ("student accuracy (test)", f"{100 * metrics['accuracy']:.1f}%"),
        *[(name, quoted.get(method, "not measured for these settings")) for method, name in QUOTED_METHODS],
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
        print(f"measured:        mean ± std over 3 seeds {STARTS[start]}, {MEASURED_RESULTS}")
        print("                 (gin/sweeps/quickstart.gin: this run's settings; standard distillation")
        print("                 trains on the same teacher labels and 16 examples per step, λ = 0)")
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


def _measured(start: str) -> dict[str, str]:
    """{method: "mean ± std%"} of the committed quickstart grid's runs from `start`."""
    import csv

    from dss_jax import results

    path = os.path.join(REPO, MEASURED_RESULTS)
    if not os.path.isfile(path):  # an installed package without the repository's docs/
        return {}
    with open(path) as f:
        rows = [
            {**r, "accuracy": float(r["accuracy"])}
            for r in csv.DictReader(f)
            if r["init"] == start and r["method"] in dict(QUOTED_METHODS)
        ]
    return {g["method"]: f"{100 * g['mean']:.1f} ± {100 * g['std']:.1f}%" for g in results.aggregate(rows, "accuracy")}


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _read_config(gin_bindings: list[str]) -> tuple[int, Optional[str], dict]:
    """`_settings`, and the trivial baselines on the dataset the quickstart generates
    (generating it here, so the train binary finds it ready)."""
    from dss_jax.data import synthetic
    from dss_jax.data.cache import read_cache

    steps, start = _settings(gin_bindings)
    with gin.config_scope("dss_synthetic"):
        paths = synthetic.ensure_dataset()
    return steps, start, synthetic.baselines(read_cache(paths["train"]), read_cache(paths["test"]))


def _settings(gin_bindings: list[str]) -> tuple[int, Optional[str]]:
    """TRAIN_STEPS of the quickstart config, and where it starts: 'pretrained' (the
    committed student), 'scratch', or None (another checkpoint, not measured)."""
    from dss_jax import gin_utils

    gin_utils.parse_gin([QUICKSTART_GIN], gin_bindings, ["."])
    steps = int(gin.query_parameter("TRAIN_STEPS/macro.value"))
    initial = gin.query_parameter("INITIAL_CHECKPOINT_PATH/macro.value")
    if initial is None:
        return steps, "scratch"
    if os.path.normpath(initial) != PRETRAINED_STUDENT:
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


if __name__ == "__main__":
    define_flags()
    cli.run(main, "quickstart")
