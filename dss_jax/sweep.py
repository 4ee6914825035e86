r"""The paper's experiments as one command: a grid of runs through the real binaries.

    python -m dss_jax.sweep --gin_file=sweeps/data_size.gin --gin.SWEEP_DIR="'/tmp/sweep'"

Runs methods x training-data fractions x seeds x model sizes (x rationale weights),
each as `python -m dss_jax.train` then `python -m dss_jax.eval` on the test split,
collects every run's `metrics.json` into `results.csv` (one row per run) and
`results.md` (mean ± std over seeds, then each Distilling Step-by-Step method minus the
baseline trained on the same labels, with the standard error of the difference), and
draws the paper-style figure (accuracy vs. the fraction of training data, one line per
method, error bars over seeds) as `figure.png`. Resumable: a run whose evaluation
finished is not run again, and a run that was interrupted continues from its last
checkpoint. SWEEP_DIR/code.json records the commit of the code that started it;
continuing from another commit is refused, since one grid must come from one version of
the code. `sweep_config.in_process` runs each train and eval in the sweep's own process
instead of as subprocesses; `sweep_config.report_only` trains nothing and writes the
results of the runs that have finished (a grid still running, or the metrics files
docs/results/ keeps).

Methods (the paper's baselines and its ablation):

    finetune     λ = 0, dataset labels              (standard finetuning)
    distill      λ = 0, teacher labels              (standard distillation)
    dss          λ = RATIONALE_WEIGHT, labels from `dss_label_source`
    dss_gt       λ = RATIONALE_WEIGHT, dataset labels
    dss_teacher  λ = RATIONALE_WEIGHT, teacher labels
    single_task  one target "rationale ... The answer is label", λ = 0 (the ablation;
                 labels from `dss_label_source`)

Initialisations: by default each size starts from `initial_checkpoints[size]` or from
scratch. `initializations = {'pretrained': '/ckpt', 'scratch': None}` runs the grid from
each instead (a name per starting point, a checkpoint or None), and
`init_methods = {'scratch': ['finetune', 'dss_gt']}` restricts the methods run from
one of them (e.g. a from-scratch control). The value `'pretrain'` starts from the
sweep's own pretraining run: before the grid, each size is trained with
`pretrain_gin_files` + `models/<size>.gin` and `pretrain_bindings` into
SWEEP_DIR/pretrain/<size>/ (resumed like any run), and its runs start from that
run's last checkpoint. results.csv has one row per run with its starting point, steps,
examples per step and the real tokens it trained on (the compute each method paid),
next to the metric.
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

from absl import flags, logging

import gin
from dss_jax import cli, gin_utils

FLAGS = flags.FLAGS

METHODS = {
    "finetune": {"RATIONALE_WEIGHT": 0.0, "LABEL_SOURCE": "'gt'"},
    "distill": {"RATIONALE_WEIGHT": 0.0, "LABEL_SOURCE": "'teacher'"},
    "dss": {},
    "dss_gt": {"LABEL_SOURCE": "'gt'"},
    "dss_teacher": {"LABEL_SOURCE": "'teacher'"},
    "single_task": {"RATIONALE_WEIGHT": 0.0, "task_options.label_target": "'rationale_then_label'"},
}
DSS_METHODS = ("dss", "dss_gt", "dss_teacher")  # the ones trained with λ = RATIONALE_WEIGHT
PRETRAIN = "pretrain"  # an initialization that is the sweep's own pretraining run


@dataclasses.dataclass(frozen=True)
class Run:
    method: str
    size: str
    fraction: float
    seed: int
    rationale_weight: float
    init: str = ""  # a name of sweep_config.initializations; "" when the sweep has none

    @property
    def name(self) -> str:
        lam = f"_lam{self.rationale_weight:g}" if self.method in DSS_METHODS else ""
        init = f"_{self.init}" if self.init else ""
        return f"{self.method}{lam}_{self.size}{init}_frac{self.fraction:g}_seed{self.seed}"


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
    initializations: Optional[dict] = None,
    init_methods: Optional[dict] = None,
    pretrain_gin_files: Sequence[str] = (),
    pretrain_bindings: Sequence[str] = (),
    train_bindings: Sequence[str] = (),
    eval_bindings: Sequence[str] = (),
    extra_gin_files: Sequence[str] = (),
    eval_split: str = "test",
    metric: str = "accuracy",
    timeout_per_run: Optional[float] = None,
    in_process: bool = False,
    allow_other_code: bool = False,
    report_only: bool = False,
    differences: Optional[Sequence[Sequence[str]]] = None,
):
    """Everything a sweep needs; bound in a recipe under gin/sweeps/.

    initial_checkpoints: {size: converted checkpoint dir}; sizes without one train from
    scratch. initializations: {name: checkpoint dir or None (scratch)}, every run starts
    from each of them instead (see the module docstring); init_methods: {name: methods}
    restricts the methods run from one; an initialization 'pretrain' is the run that
    pretrain_gin_files (with models/<size>.gin) and pretrain_bindings train first (e.g.
    runs/pretrain.gin and a span-corruption task). train_bindings / eval_bindings: extra gin
    bindings for every run. in_process: run each train and eval in this process (the
    same functions the binaries call, each with its own gin config, logs to the same
    files) instead of as subprocesses: no interpreter and import start-up per run, and
    programs compiled once; results are identical (tests/test_sweep.py).
    allow_other_code: resume a SWEEP_DIR whose runs another commit of this code made
    (see `check_code`); off, that is refused. report_only: train and evaluate nothing,
    write the results of the runs that finished (and say how many have not), e.g. of a
    grid still running or of the metrics files kept in docs/results/. differences:
    (method, baseline) pairs read in results.md (default `default_differences`).
    """
    return dict(locals())


def plan(cfg: dict) -> list[Run]:
    inits = list(cfg.get("initializations") or {}) or [""]
    runs = []
    # Seed outermost: a sweep stopped part-way has whole grids of its first seeds.
    for seed, init, method, size, fraction in itertools.product(
        cfg["seeds"], inits, cfg["methods"], cfg["sizes"], cfg["fractions"]
    ):
        if init and method not in (cfg.get("init_methods") or {}).get(init, cfg["methods"]):
            continue
        weights = cfg["rationale_weights"] if method in DSS_METHODS else (0.0,)
        for lam in weights:
            runs.append(Run(method, size, float(fraction), int(seed), float(lam), init))
    return runs


def run_path(run: Run, cfg: dict) -> str:
    """SWEEP_DIR/runs/<run name>: the run's model/, eval/ and logs."""
    return os.path.join(cfg["sweep_dir"], "runs", run.name)


def pretrain_dir(size: str, cfg: dict) -> str:
    return os.path.join(cfg["sweep_dir"], "pretrain", size)


def initial_checkpoint(run: Run, cfg: dict) -> Optional[str]:
    if run.init:
        start = cfg["initializations"][run.init]
        return os.path.join(pretrain_dir(run.size, cfg), "model") if start == PRETRAIN else start
    return (cfg.get("initial_checkpoints") or {}).get(run.size)


def run_bindings(run: Run, cfg: dict) -> list[str]:
    b = {
        "task_options.train_fraction": run.fraction,
        "task_options.seed": run.seed,
        "train.seed": run.seed,
        "RATIONALE_WEIGHT": run.rationale_weight,
        "LABEL_SOURCE": repr(cfg["dss_label_source"]),
    }
    b.update(METHODS[run.method])
    ckpt = initial_checkpoint(run, cfg)
    if ckpt:
        b["INITIAL_CHECKPOINT_PATH"] = repr(ckpt)  # repr: a path may hold a quote
    elif run.init:  # an initialization named as scratch is scratch, whatever the gin files start from
        b["INITIAL_CHECKPOINT_PATH"] = "None"
    return [f"{k} = {v}" for k, v in b.items()]


# The binaries a run goes through; their modules define REQUIRED_MACROS and the
# configurables their gin files bind (e.g. eval's evaluate_checkpoints).
TRAIN, EVAL = "dss_jax.train", "dss_jax.eval"


def run_commands(run: Run, cfg: dict) -> list[tuple[str, list[str], list[str]]]:
    """(binary module, gin files, gin bindings) of the train and eval commands of a run."""
    model_dir = os.path.join(run_path(run, cfg), "model")
    common = run_bindings(run, cfg)
    train = (
        TRAIN,
        ["runs/train.gin", f"models/{run.size}.gin", cfg["task_gin"], *cfg["extra_gin_files"]],
        [f"MODEL_DIR = {model_dir!r}", *common, *cfg["train_bindings"]],
    )
    evaluate = (
        EVAL,
        ["runs/eval.gin", cfg["task_gin"], *cfg["extra_gin_files"]],
        [
            f"CHECKPOINT_PATH = {model_dir!r}",
            f"EVAL_OUTPUT_DIR = {os.path.join(run_path(run, cfg), 'eval')!r}",
            f"SPLIT = {cfg['eval_split']!r}",
            "STEPS = 'latest'",
            *[b for b in common if b.startswith("task_options.label_target")],
            *cfg["eval_bindings"],
        ],
    )
    return [train, evaluate]


def pretrain_commands(runs: list[Run], cfg: dict) -> list[tuple[str, tuple[str, list[str], list[str]]]]:
    """(size, train command) of the pretraining run of each size that a run starts from."""
    sizes = sorted({r.size for r in runs if r.init and cfg["initializations"][r.init] == PRETRAIN})
    return [
        (
            size,
            (
                TRAIN,
                [*cfg["pretrain_gin_files"], f"models/{size}.gin"],
                [f"MODEL_DIR = {os.path.join(pretrain_dir(size, cfg), 'model')!r}", *cfg["pretrain_bindings"]],
            ),
        )
        for size in sizes
    ]


def check_runs(runs: list[Run], cfg: dict, search_paths: Sequence[str] = (".",)) -> None:
    """Parses every run's train and eval config here, as those binaries will, before the
    first starts: a misspelt name in train_bindings would otherwise stop the sweep only
    when its run comes up, possibly hours in. Leaves gin's config cleared."""
    import importlib

    commands = [(f"pretraining {size}", c) for size, c in pretrain_commands(runs, cfg)]
    commands += [(f"run {run.name}", c) for run in runs for c in run_commands(run, cfg)]
    for name, (module, gin_files, bindings) in commands:
        binary = importlib.import_module(module)  # registers its configurables
        gin.clear_config()
        try:
            gin_utils.parse_gin(gin_files, bindings, search_paths, binary.REQUIRED_MACROS)
        except gin_utils.GinConfigError as e:
            raise gin_utils.GinConfigError(f"{name}, {module.split('.')[-1]}: {e}") from e
    gin.clear_config()


def check_methods(cfg: dict) -> None:
    for method in cfg["methods"]:
        if method not in METHODS:
            raise gin_utils.GinConfigError(
                f"sweep_config.methods: unknown method {method!r}"
                f"{gin_utils.did_you_mean(method, METHODS)}; known: {', '.join(METHODS)}"
            )
    inits = cfg.get("initializations") or {}
    if PRETRAIN in inits.values() and not cfg.get("pretrain_gin_files"):
        raise gin_utils.GinConfigError(
            "sweep_config.initializations starts from 'pretrain', but "
            "sweep_config.pretrain_gin_files is empty: name the pretraining run's gin files "
            "(e.g. ['runs/pretrain.gin', 'tasks/synthetic_pretrain.gin'])"
        )
    for init, methods in (cfg.get("init_methods") or {}).items():
        if init not in inits:
            raise gin_utils.GinConfigError(
                f"sweep_config.init_methods: {init!r} is not one of "
                f"sweep_config.initializations ({', '.join(inits) or 'none'})"
            )
        unknown = [m for m in methods if m not in cfg["methods"]]
        if unknown:
            raise gin_utils.GinConfigError(
                f"sweep_config.init_methods[{init!r}]: {unknown} not in sweep_config.methods {list(cfg['methods'])}"
            )


def _run_binary(
    module: str, gin_files: list[str], bindings: list[str], search_paths: Sequence[str], log_path: str, timeout
) -> None:
    cmd = [
        sys.executable,
        "-m",
        module,
        *[f"--gin_file={f}" for f in gin_files],
        *[f"--gin_bindings={b}" for b in bindings],
        f"--gin_search_paths={','.join(search_paths)}",
    ]
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise cli.UserError(
                f"{module} ran past sweep_config.timeout_per_run={timeout} s and was stopped; "
                f"raise it or shorten the run (log: {log_path})"
            ) from None
    if proc.returncode:
        raise cli.child_error(module, proc.returncode, log_path)


def _run_in_process(
    module: str, gin_files: list[str], bindings: list[str], search_paths: Sequence[str], log_path: str
) -> None:
    """What `python -m MODULE` does with these gin files and bindings, in this process:
    a fresh gin config, the tasks' vocabularies unresolved (a run may bind another), the
    binary's own entry point, its logs appended to `log_path`."""
    import importlib
    import logging as std_logging

    import jax

    from dss_jax.data import tasks as dss_tasks

    binary = importlib.import_module(module)
    handler = std_logging.FileHandler(log_path)
    handler.setFormatter(std_logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = std_logging.getLogger()
    root.addHandler(handler)
    try:
        with open(log_path, "a") as log:
            log.write(
                f"$ (in process) {module} "
                + " ".join([*map("--gin_file={}".format, gin_files), *map("--gin_bindings={}".format, bindings)])
                + "\n"
            )
        gin.clear_config()
        _reset_task_vocabularies(dss_tasks)
        try:
            binary.run_configured(gin_files, bindings, search_paths)
        except cli.UserError as e:
            raise cli.UserError(f"{module} failed: {e} (log: {log_path})") from e
        except SystemExit as e:  # a binary's user error as a message
            if isinstance(e.code, str):
                raise cli.UserError(f"{module} failed: {e.code} (log: {log_path})") from None
            raise
    finally:
        root.removeHandler(handler)
        handler.close()
        gin.clear_config()
        _reset_task_vocabularies(dss_tasks)
        jax.clear_caches()  # compiled programs stay in the persistent cache, not in memory


def _reset_task_vocabularies(dss_tasks) -> None:
    import seqio

    for name in dss_tasks.REGISTERED:
        if name in seqio.TaskRegistry.names():
            for feature in seqio.get_mixture_or_task(name).output_features.values():
                if hasattr(feature.vocabulary, "reset"):
                    feature.vocabulary.reset()


def run_command(
    command: tuple[str, list[str], list[str]], run_dir: str, cfg: dict, search_paths: Sequence[str]
) -> None:
    """Runs one binary of a run (a resumed train binary finishes an interrupted run), its
    log in run_dir/<binary>.log."""
    module, gin_files, bindings = command
    os.makedirs(run_dir, exist_ok=True)
    log = os.path.join(run_dir, f"{module.split('.')[-1]}.log")
    if cfg.get("in_process"):
        _run_in_process(module, gin_files, bindings, search_paths, log)
    else:
        _run_binary(module, gin_files, bindings, search_paths, log, cfg["timeout_per_run"])


def execute(run: Run, cfg: dict, search_paths: Sequence[str] = (".",)) -> dict:
    """Trains and evaluates one run unless its result is already there."""
    done = _eval_result(run_path(run, cfg))
    if done is not None:
        return done
    for command in run_commands(run, cfg):
        run_command(command, run_path(run, cfg), cfg, search_paths)
    result = _eval_result(run_path(run, cfg))
    if result is None:
        raise RuntimeError(f"{run.name}: the eval binary wrote no metrics.json under {run_path(run, cfg)}/eval")
    return result


def finished(runs: list[Run], cfg: dict) -> dict[str, dict]:
    """{run name: its metrics} of the runs whose evaluation finished."""
    results = {run.name: _eval_result(run_path(run, cfg)) for run in runs}
    return {name: r for name, r in results.items() if r is not None}


def _eval_result(run_dir: str) -> Optional[dict]:
    """The metrics of the latest evaluated step of a run, if its evaluation finished."""
    eval_dir = os.path.join(run_dir, "eval")
    if not os.path.isdir(eval_dir):
        return None
    steps = sorted(
        int(d[5:])
        for d in os.listdir(eval_dir)
        if d.startswith("step_") and d[5:].isdigit() and os.path.exists(os.path.join(eval_dir, d, "metrics.json"))
    )
    if not steps:
        return None
    with open(os.path.join(eval_dir, f"step_{steps[-1]}", "metrics.json")) as f:
        return json.load(f)


COMPUTE_COLUMNS = ("steps", "examples_per_step", "rows_per_step", "real_tokens")


def train_compute(run_dir: str) -> dict:
    """What a run trained on, from its train/metrics.jsonl: steps, the mean examples and
    rows per step, and the real (non-padding) tokens of every step summed."""
    path = os.path.join(run_dir, "model", "train", "metrics.jsonl")
    out = {k: "" for k in COMPUTE_COLUMNS}
    if not os.path.exists(path):
        return out
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    previous, tokens, examples, rows = 0, 0.0, 0.0, 0.0
    for r in records:  # each record averages the steps since the previous one
        n = r["step"] - previous
        tokens += r.get("real_tokens_per_step", float("nan")) * n
        examples += r.get("examples_per_step", float("nan")) * n
        rows += r.get("rows_per_step", float("nan")) * n
        previous = r["step"]
    if previous:
        out.update(
            steps=previous,
            examples_per_step=round(examples / previous, 2),
            rows_per_step=round(rows / previous, 2),
            real_tokens=int(tokens) if math.isfinite(tokens) else "",
        )
    return out


def collect(
    runs: list[Run], results: dict[str, dict], metric: str, out_dir: str, cfg: Optional[dict] = None
) -> list[dict]:
    """Writes results.csv / results.md and returns the per-run rows."""
    cfg = cfg or {}
    rows = []
    for run in runs:
        res = results.get(run.name)
        if res is None:
            continue
        if metric not in res:
            raise KeyError(f"{run.name}: metric {metric!r} not in its metrics.json (has {sorted(res)})")
        run_dir = run_path(run, {"sweep_dir": out_dir})
        rows.append(
            {
                **dataclasses.asdict(run),
                "run": run.name,
                metric: float(res[metric]),
                "initial_checkpoint": initial_checkpoint(run, cfg) or "",
                **train_compute(run_dir),
            }
        )
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(
            f,
            fieldnames=[
                "run",
                "method",
                "init",
                "size",
                "fraction",
                "seed",
                "rationale_weight",
                metric,
                "initial_checkpoint",
                *COMPUTE_COLUMNS,
            ],
        )
        writer.writeheader()
        writer.writerows(rows)
    groups = aggregate(rows, metric)
    lines = [f"| method | init | size | fraction | λ | runs | {metric} (mean ± std) |", "|---|---|---|---|---|---|---|"]
    for g in groups:
        lines.append(
            f"| {g['method']} | {g['init'] or '-'} | {g['size']} | {g['fraction']:g} | {g['rationale_weight']:g} "
            f"| {g['n']} | {g['mean']:.4f} ± {g['std']:.4f} |"
        )
    diffs = differences(groups, cfg.get("differences") or default_differences(cfg.get("dss_label_source", "gt")))
    if diffs:
        lines += [
            "",
            f"Differences of the mean {metric} over seeds, method − baseline, with the standard error of the",
            "difference, sqrt(s_a²/n_a + s_b²/n_b); larger than the noise when |Δ| > 2 SE",
            "(n/a: fewer than two runs on a side).",
            "",
            "| method − baseline | init | size | fraction | λ | Δ | SE | \\|Δ\\| > 2 SE |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for d in diffs:
            se = "n/a" if math.isnan(d["se"]) else f"{d['se']:.4f}"
            larger = "n/a" if math.isnan(d["se"]) else ("yes" if d["larger"] else "no")
            lines.append(
                f"| {d['method']} − {d['baseline']} | {d['init'] or '-'} | {d['size']} | {d['fraction']:g} "
                f"| {d['rationale_weight']:g} | {d['diff']:+.4f} | {se} | {larger} |"
            )
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return rows


def default_differences(dss_label_source: str = "gt") -> list[tuple[str, str]]:
    """The comparisons a grid is read by, (method, baseline): Distilling Step-by-Step
    against the baseline trained on the same labels, and against the single-task ablation
    (whose labels, like `dss`'s, come from dss_label_source)."""
    same = {"gt": ("dss_gt", "finetune"), "teacher": ("dss_teacher", "distill")}.get(dss_label_source)
    pairs = [("dss_gt", "finetune"), ("dss_teacher", "distill")]
    if same:
        pairs += [("dss", same[1]), (same[0], "single_task"), ("dss", "single_task")]
    return pairs


def differences(groups: list[dict], pairs: Sequence[Sequence[str]]) -> list[dict]:
    """method − baseline wherever both ran from the same start, size and fraction (each of
    the method's λ): the difference of their means over seeds, its standard error
    sqrt(s_a²/n_a + s_b²/n_b) (NaN with fewer than two runs on a side) and whether |Δ|
    exceeds two of them, the reading the comparison's protocol fixed."""
    by_key: dict[tuple, list[dict]] = {}
    for g in groups:
        by_key.setdefault((g["method"], g["init"], g["size"], g["fraction"]), []).append(g)
    out = []
    for method, baseline in pairs:
        for (m, init, size, fraction), mine in sorted(by_key.items()):
            if m != method or (baseline, init, size, fraction) not in by_key:
                continue
            bases = by_key[(baseline, init, size, fraction)]
            for a, base in itertools.product(mine, bases):
                if len(bases) > 1 and base["rationale_weight"] != a["rationale_weight"]:
                    continue  # a baseline run at several λ is compared at the same λ
                se = math.sqrt(a["std"] ** 2 / a["n"] + base["std"] ** 2 / base["n"])
                if min(a["n"], base["n"]) < 2:
                    se = float("nan")
                diff = a["mean"] - base["mean"]
                out.append(
                    dict(
                        method=method,
                        baseline=baseline,
                        init=init,
                        size=size,
                        fraction=fraction,
                        rationale_weight=a["rationale_weight"],
                        diff=diff,
                        se=se,
                        larger=abs(diff) > 2 * se,
                    )
                )
    return out


def aggregate(rows: list[dict], metric: str) -> list[dict]:
    keyed: dict[tuple, list[float]] = {}
    for r in rows:
        keyed.setdefault((r.get("init", ""), r["method"], r["size"], r["fraction"], r["rationale_weight"]), []).append(
            r[metric]
        )
    out = []
    for (init, method, size, fraction, lam), values in sorted(keyed.items()):
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        out.append(
            dict(
                init=init,
                method=method,
                size=size,
                fraction=fraction,
                rationale_weight=lam,
                n=len(values),
                mean=mean,
                std=std,
            )
        )
    return out


def plot(rows: list[dict], metric: str, path: str, title: str = "") -> None:
    """Accuracy vs. fraction of training data, one line per method (and size, and λ);
    one panel per initialisation (e.g. pretrained and scratch side by side), on one scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = aggregate(rows, metric)
    inits = sorted({g["init"] for g in groups}) or [""]
    fig, axes = plt.subplots(1, len(inits), figsize=(6 * len(inits), 4.2), dpi=120, sharey=True, squeeze=False)
    sizes = {g["size"] for g in groups}
    lams = {g["rationale_weight"] for g in groups if g["method"] in DSS_METHODS}

    def label_of(g: dict) -> str:
        label = g["method"]
        if g["method"] in DSS_METHODS and len(lams) > 1:
            label += f" (λ={g['rationale_weight']:g})"
        return label + (f" [{g['size']}]" if len(sizes) > 1 else "")

    # One colour per line label in every panel, so a method reads the same side by side.
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {label: cycle[i % len(cycle)] for i, label in enumerate(sorted({label_of(g) for g in groups}))}
    for ax, init in zip(axes[0], inits):
        series: dict[str, list[dict]] = {}
        for g in groups:
            if g["init"] == init:
                series.setdefault(label_of(g), []).append(g)
        for label, points in sorted(series.items()):
            points.sort(key=lambda g: g["fraction"])
            ax.errorbar(
                [100 * g["fraction"] for g in points],
                [100 * g["mean"] for g in points],
                yerr=[100 * g["std"] for g in points],
                marker="o",
                capsize=3,
                label=label,
                color=colours[label],
            )
        ax.set_xlabel("% of training data")
        ax.set_title(f"{title} ({init})" if init else title)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel(f"test {metric} (%), mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


CODE_FILE = "code.json"  # SWEEP_DIR/code.json: the commit of dss_jax that made the runs


def code_version() -> dict:
    """{"commit": the git commit of this checkout of dss_jax or None (not a git checkout),
    "modified": whether tracked files differ from it}."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args: str) -> Optional[str]:
        try:
            r = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "modified": bool(status)}


def check_code(cfg: dict) -> None:
    """One grid, one version of the code: runs of a SWEEP_DIR started at another commit
    would mix results of different code (e.g. another pretrained student: the pretraining
    corpus holds the project's docs). The first call records the commit in
    SWEEP_DIR/code.json; a later one from another commit is refused unless
    `allow_other_code`. A checkout with modified files cannot be told apart: a warning."""
    from dss_jax import files

    path = os.path.join(cfg["sweep_dir"], CODE_FILE)
    now = code_version()
    if now["modified"]:
        logging.warning("this checkout of dss_jax has uncommitted changes: %s cannot tell them apart", path)
    if not os.path.exists(path):
        os.makedirs(cfg["sweep_dir"], exist_ok=True)
        files.atomic_write(path, json.dumps(now, indent=1) + "\n")
        return
    recorded = files.read_json_object(path, cli.UserError, "the code that made this sweep's runs")
    if None in (recorded.get("commit"), now["commit"]) or recorded.get("commit") == now["commit"]:
        return
    if cfg.get("allow_other_code"):
        logging.warning("%s: runs made by commit %s, continued by %s", path, recorded["commit"], now["commit"])
        return
    raise cli.UserError(
        f"SWEEP_DIR {cfg['sweep_dir']} holds runs made by dss_jax at commit {recorded['commit'][:12]} ({path}); "
        f"this checkout is at {now['commit'][:12]}. Continue the grid from that commit (git worktree add DIR "
        f"{recorded['commit'][:12]}), or start a new SWEEP_DIR, or bind sweep_config.allow_other_code = True "
        "to mix them knowingly"
    )


def run_all(runs: list[Run], cfg: dict, search_paths: Sequence[str]) -> dict[str, dict]:
    """The pretraining runs the grid starts from, then every run: {run name: its metrics}."""
    os.makedirs(cfg["sweep_dir"], exist_ok=True)
    # Only what a run still to do starts from: a finished grid is not pretrained again.
    done = finished(runs, cfg)
    for size, command in pretrain_commands([run for run in runs if run.name not in done], cfg):
        t0 = time.time()
        print(f"pretraining {size} ...", flush=True)
        run_command(command, pretrain_dir(size, cfg), cfg, search_paths)
        print(f"pretraining {size}: done ({time.time() - t0:.0f}s)", flush=True)
    results = {}
    for i, run in enumerate(runs, start=1):
        t0 = time.time()
        logging.info("[%d/%d] %s", i, len(runs), run.name)
        print(f"[{i}/{len(runs)}] {run.name} ...", flush=True)
        results[run.name] = execute(run, cfg, search_paths)
        print(
            f"[{i}/{len(runs)}] {run.name}: {cfg['metric']}={results[run.name].get(cfg['metric'])} "
            f"({time.time() - t0:.0f}s)",
            flush=True,
        )
    return results


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    gin_utils.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
    cfg = sweep_config()
    check_methods(cfg)
    if cfg["in_process"] and cfg["timeout_per_run"] is not None:
        raise gin_utils.GinConfigError(
            "sweep_config.timeout_per_run needs subprocesses: unset it or sweep_config.in_process"
        )
    runs = plan(cfg)
    if cfg["report_only"]:
        results = finished(runs, cfg)
        if len(results) < len(runs):
            print(f"{len(runs) - len(results)} of {len(runs)} runs have not finished: not in the results", flush=True)
    else:
        check_runs(runs, cfg, FLAGS.gin_search_paths)  # before anything is written
        check_code(cfg)
        results = run_all(runs, cfg, FLAGS.gin_search_paths)
    rows = collect(runs, results, cfg["metric"], cfg["sweep_dir"], cfg)
    plot(rows, cfg["metric"], os.path.join(cfg["sweep_dir"], "figure.png"), title=os.path.basename(cfg["task_gin"]))
    print(open(os.path.join(cfg["sweep_dir"], "results.md")).read())
    print(f"results: {cfg['sweep_dir']}/results.csv, results.md, figure.png")


if __name__ == "__main__":
    gin_utils.define_gin_flags()
    cli.run(main, "sweep")
