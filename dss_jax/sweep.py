r"""The paper's experiments as one command: a grid of runs through the real binaries.

    python -m dss_jax.sweep --gin_file=sweeps/data_size.gin --gin.SWEEP_DIR="'/tmp/sweep'"

Runs methods x training-data fractions x seeds x model sizes (x rationale weights),
each as `python -m dss_jax.train` then `python -m dss_jax.eval` on the test split,
collects every run's `metrics.json` into `results.csv` and `results.md` (one row per
run, then mean ± std over seeds), and draws the paper-style figure (accuracy vs. the
fraction of training data, one line per method, error bars over seeds) as
`figure.png`. Resumable: a run whose evaluation finished is not run again, and a run
that was interrupted continues from its last checkpoint.

Methods (the paper's baselines and its ablation):

    finetune     λ = 0, dataset labels              (standard finetuning)
    distill      λ = 0, teacher labels              (standard distillation)
    dss          λ = RATIONALE_WEIGHT, labels from `dss_label_source`
    single_task  one target "rationale ... The answer is label", λ = 0 (the ablation)
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
import time
from typing import Optional, Sequence

import gin
from absl import flags, logging

from dss_jax import cli
from dss_jax import gin_utils

FLAGS = flags.FLAGS

METHODS = {
    "finetune": {"RATIONALE_WEIGHT": 0.0, "LABEL_SOURCE": "'gt'"},
    "distill": {"RATIONALE_WEIGHT": 0.0, "LABEL_SOURCE": "'teacher'"},
    "dss": {},
    "single_task": {"RATIONALE_WEIGHT": 0.0, "task_options.label_target": "'rationale_then_label'"},
}


@dataclasses.dataclass(frozen=True)
class Run:
    method: str
    size: str
    fraction: float
    seed: int
    rationale_weight: float

    @property
    def name(self) -> str:
        lam = f"_lam{self.rationale_weight:g}" if self.method == "dss" else ""
        return f"{self.method}{lam}_{self.size}_frac{self.fraction:g}_seed{self.seed}"


@gin.configurable
def sweep_config(
    sweep_dir: str = gin.REQUIRED,
    task_gin: str = gin.REQUIRED,
    methods: Sequence[str] = ("finetune", "distill", "dss"),
    sizes: Sequence[str] = ("small",),
    fractions: Sequence[float] = (1.0,),
    seeds: Sequence[int] = (0,),
    rationale_weights: Sequence[float] = (1.0,),
    dss_label_source: str = "gt",
    initial_checkpoints: Optional[dict] = None,
    train_bindings: Sequence[str] = (),
    eval_bindings: Sequence[str] = (),
    extra_gin_files: Sequence[str] = (),
    eval_split: str = "test",
    metric: str = "accuracy",
    timeout_per_run: Optional[float] = None,
):
    """Everything a sweep needs; bound in a recipe under gin/sweeps/.

    initial_checkpoints: {size: converted checkpoint dir}; sizes without one train from
    scratch. train_bindings / eval_bindings: extra gin bindings for every run.
    """
    return dict(locals())


def plan(cfg: dict) -> list[Run]:
    runs = []
    for method, size, fraction, seed in itertools.product(cfg["methods"], cfg["sizes"], cfg["fractions"], cfg["seeds"]):
        weights = cfg["rationale_weights"] if method == "dss" else (0.0,)
        for lam in weights:
            runs.append(Run(method, size, float(fraction), int(seed), float(lam)))
    return runs


def run_bindings(run: Run, cfg: dict) -> list[str]:
    b = {
        "task_options.train_fraction": run.fraction,
        "task_options.seed": run.seed,
        "train.seed": run.seed,
        "RATIONALE_WEIGHT": run.rationale_weight,
        "LABEL_SOURCE": repr(cfg["dss_label_source"]),
    }
    b.update(METHODS[run.method])
    ckpt = (cfg["initial_checkpoints"] or {}).get(run.size)
    if ckpt:
        b["INITIAL_CHECKPOINT_PATH"] = repr(ckpt)  # repr: a path may hold a quote
    return [f"{k} = {v}" for k, v in b.items()]


# The binaries a run goes through; their modules define REQUIRED_MACROS and the
# configurables their gin files bind (e.g. eval's evaluate_checkpoints).
TRAIN, EVAL = "dss_jax.train", "dss_jax.eval"


def run_commands(run: Run, cfg: dict) -> list[tuple[str, list[str], list[str]]]:
    """(binary module, gin files, gin bindings) of the train and eval commands of a run."""
    run_dir = os.path.join(cfg["sweep_dir"], "runs", run.name)
    model_dir = os.path.join(run_dir, "model")
    common = run_bindings(run, cfg)
    train = (TRAIN, ["runs/train.gin", f"models/{run.size}.gin", cfg["task_gin"], *cfg["extra_gin_files"]],
             [f"MODEL_DIR = {model_dir!r}", *common, *cfg["train_bindings"]])
    evaluate = (EVAL, ["runs/eval.gin", cfg["task_gin"], *cfg["extra_gin_files"]],
                [f"CHECKPOINT_PATH = {model_dir!r}", f"EVAL_OUTPUT_DIR = {os.path.join(run_dir, 'eval')!r}",
                 f"SPLIT = {cfg['eval_split']!r}", "STEPS = 'latest'",
                 *[b for b in common if b.startswith("task_options.label_target")], *cfg["eval_bindings"]])
    return [train, evaluate]


def check_runs(runs: list[Run], cfg: dict, search_paths: Sequence[str] = (".",)) -> None:
    """Parses every run's train and eval config here, as those binaries will, before the
    first starts: a misspelt name in train_bindings would otherwise stop the sweep only
    when its run comes up, possibly hours in. Leaves gin's config cleared."""
    import importlib

    for run in runs:
        for module, gin_files, bindings in run_commands(run, cfg):
            binary = importlib.import_module(module)  # registers its configurables
            gin.clear_config()
            try:
                gin_utils.parse_gin(gin_files, bindings, search_paths, binary.REQUIRED_MACROS)
            except gin_utils.GinConfigError as e:
                raise gin_utils.GinConfigError(f"run {run.name}, {module.split('.')[-1]}: {e}") from e
    gin.clear_config()


def check_methods(cfg: dict) -> None:
    for method in cfg["methods"]:
        if method not in METHODS:
            raise gin_utils.GinConfigError(f"sweep_config.methods: unknown method {method!r}"
                                           f"{gin_utils.did_you_mean(method, METHODS)}; known: {', '.join(METHODS)}")


def _run_binary(module: str, gin_files: list[str], bindings: list[str], search_paths: Sequence[str],
                log_path: str, timeout) -> None:
    cmd = [sys.executable, "-m", module, *[f"--gin_file={f}" for f in gin_files],
           *[f"--gin_bindings={b}" for b in bindings], f"--gin_search_paths={','.join(search_paths)}"]
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise cli.UserError(f"{module} ran past sweep_config.timeout_per_run={timeout} s and was stopped; "
                                f"raise it or shorten the run (log: {log_path})") from None
    if proc.returncode:
        raise cli.child_error(module, proc.returncode, log_path)


def execute(run: Run, cfg: dict, search_paths: Sequence[str] = (".",)) -> dict:
    """Trains and evaluates one run unless its result is already there."""
    run_dir = os.path.join(cfg["sweep_dir"], "runs", run.name)
    done = _eval_result(run_dir)
    if done is not None:
        return done
    os.makedirs(run_dir, exist_ok=True)
    for module, gin_files, bindings in run_commands(run, cfg):
        log = os.path.join(run_dir, f"{module.split('.')[-1]}.log")
        _run_binary(module, gin_files, bindings, search_paths, log, cfg["timeout_per_run"])
    result = _eval_result(run_dir)
    if result is None:
        raise RuntimeError(f"{run.name}: the eval binary wrote no metrics.json under {run_dir}/eval")
    return result


def _eval_result(run_dir: str) -> Optional[dict]:
    """The metrics of the latest evaluated step of a run, if its evaluation finished."""
    eval_dir = os.path.join(run_dir, "eval")
    if not os.path.isdir(eval_dir):
        return None
    steps = sorted(int(d[5:]) for d in os.listdir(eval_dir) if d.startswith("step_") and d[5:].isdigit()
                   and os.path.exists(os.path.join(eval_dir, d, "metrics.json")))
    if not steps:
        return None
    with open(os.path.join(eval_dir, f"step_{steps[-1]}", "metrics.json")) as f:
        return json.load(f)


def collect(runs: list[Run], results: dict[str, dict], metric: str, out_dir: str) -> list[dict]:
    """Writes results.csv / results.md and returns the per-run rows."""
    rows = []
    for run in runs:
        res = results.get(run.name)
        if res is None:
            continue
        if metric not in res:
            raise KeyError(f"{run.name}: metric {metric!r} not in its metrics.json (has {sorted(res)})")
        rows.append({**dataclasses.asdict(run), "run": run.name, metric: float(res[metric])})
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["run", "method", "size", "fraction", "seed", "rationale_weight", metric])
        writer.writeheader()
        writer.writerows(rows)
    groups = aggregate(rows, metric)
    lines = [f"| method | size | fraction | λ | runs | {metric} (mean ± std) |", "|---|---|---|---|---|---|"]
    for g in groups:
        lines.append(f"| {g['method']} | {g['size']} | {g['fraction']:g} | {g['rationale_weight']:g} | {g['n']} | "
                     f"{g['mean']:.4f} ± {g['std']:.4f} |")
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return rows


def aggregate(rows: list[dict], metric: str) -> list[dict]:
    keyed: dict[tuple, list[float]] = {}
    for r in rows:
        keyed.setdefault((r["method"], r["size"], r["fraction"], r["rationale_weight"]), []).append(r[metric])
    out = []
    for (method, size, fraction, lam), values in sorted(keyed.items()):
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        out.append(dict(method=method, size=size, fraction=fraction, rationale_weight=lam, n=len(values),
                        mean=mean, std=std))
    return out


def plot(rows: list[dict], metric: str, path: str, title: str = "") -> None:
    """Accuracy vs. fraction of training data, one line per method (and size, and λ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = aggregate(rows, metric)
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    series: dict[str, list[dict]] = {}
    sizes = {g["size"] for g in groups}
    lams = {g["rationale_weight"] for g in groups if g["method"] == "dss"}
    for g in groups:
        label = g["method"]
        if g["method"] == "dss" and len(lams) > 1:
            label += f" (λ={g['rationale_weight']:g})"
        if len(sizes) > 1:
            label += f" [{g['size']}]"
        series.setdefault(label, []).append(g)
    for label, points in sorted(series.items()):
        points.sort(key=lambda g: g["fraction"])
        ax.errorbar([100 * g["fraction"] for g in points], [100 * g["mean"] for g in points],
                    yerr=[100 * g["std"] for g in points], marker="o", capsize=3, label=label)
    ax.set_xlabel("% of training data")
    ax.set_ylabel(f"test {metric} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    gin_utils.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
    cfg = sweep_config()
    check_methods(cfg)
    runs = plan(cfg)
    check_runs(runs, cfg, FLAGS.gin_search_paths)  # before anything is written
    os.makedirs(cfg["sweep_dir"], exist_ok=True)
    results = {}
    for i, run in enumerate(runs, start=1):
        t0 = time.time()
        logging.info("[%d/%d] %s", i, len(runs), run.name)
        print(f"[{i}/{len(runs)}] {run.name} ...", flush=True)
        results[run.name] = execute(run, cfg, FLAGS.gin_search_paths)
        print(f"[{i}/{len(runs)}] {run.name}: {cfg['metric']}={results[run.name].get(cfg['metric'])} "
              f"({time.time() - t0:.0f}s)", flush=True)
    rows = collect(runs, results, cfg["metric"], cfg["sweep_dir"])
    plot(rows, cfg["metric"], os.path.join(cfg["sweep_dir"], "figure.png"), title=os.path.basename(cfg["task_gin"]))
    print(open(os.path.join(cfg["sweep_dir"], "results.md")).read())
    print(f"results: {cfg['sweep_dir']}/results.csv, results.md, figure.png")


if __name__ == "__main__":
    gin_utils.define_gin_flags()
    cli.run(main, "sweep")
