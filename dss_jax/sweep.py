r"""The paper's experiments as one command: a grid of runs through the real binaries.

    python -m dss_jax.sweep --gin_file=sweeps/data_size.gin --gin.SWEEP_DIR="'/tmp/sweep'"

Runs methods x training-data fractions x seeds x model sizes (x rationale weights),
each as `python -m dss_jax.train` then `python -m dss_jax.eval` on the test split,
writes `results.csv` (one row per run), `results.md` (mean ± std over seeds, then each
Distilling Step-by-Step method minus the baseline trained on the same labels, with the
standard error of the difference) and the paper-style figure (accuracy vs. the fraction
of training data) as `figure.png` (results.py). `sweep_config.selection = 'validation'`
scores each run's checkpoint that validation selects instead of its last, and with
token or example budgets adds the reading at equal compute (budgets.csv,
figure_budgets.png). Resumable: a run whose evaluation
finished is not run again, and a run that was interrupted continues from its last
checkpoint (its evaluation is run with OVERWRITE = True: the sweep evaluates only the
steps without a finished result, and replaces what an interrupted one left). Before
anything is written, SWEEP_DIR is checked (dss_jax/output_paths.py): it may not lie in a
run or a checkpoint, nor would its results.csv, results.md, ... replace one of the gin
files it reads. SWEEP_DIR/code.json records the commit of the code that started it;
continuing from another commit is refused, since one grid must come from one version of
the code. `sweep_config.in_process` runs each train and eval in the sweep's own process
instead of as subprocesses; `sweep_config.report_only` trains nothing and writes the
results of the runs that have finished (a grid still running, or the metrics files
docs/results/ keeps). `sweep_config.num_workers` and `sweep_config.worker` split a grid
between processes on one SWEEP_DIR (e.g. one per GPU: CUDA_VISIBLE_DEVICES=i with
--gin.sweep_config.worker=i).

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

import contextlib
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Iterator, Optional, Sequence, Union

from absl import flags, logging

import gin
from dss_jax import cli, files, gin_utils, output_paths, results

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
    selection: str = "validation",
    token_budgets: Union[str, Sequence[float]] = "auto",
    example_budgets: Union[str, Sequence[float]] = "auto",
    num_workers: int = 1,
    worker: int = 0,
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
    (method, baseline) pairs read in results.md (default `results.default_differences`).
    selection: which checkpoint of a run is scored on the test split: 'validation' (the
    one its validation evaluations select; every run then keeps the checkpoints that were
    the best when evaluated; train_bindings need EVAL_PERIOD > 0, runs/train.gin's is 1000,
    and may set train.early_stopping_patience) or 'last' (the run's last checkpoint: only
    sound when every method has converged by then). token_budgets / example_budgets (with
    'validation'): the reading at equal compute, each run's selected checkpoint within
    each budget of real tokens / examples trained on, a list fixed before the grid runs or
    'auto' (every power of two; results.py). num_workers / worker: this process runs
    every num_workers-th run of the plan, starting at its `worker`-th (0-based), beside
    the other workers on one SWEEP_DIR (one per GPU, or two on a 2-core CPU); worker 0
    pretrains and the others wait for it; each writes the results of every run finished
    by then, so the last to finish writes the whole grid's.
    """
    return dict(locals())


def check_workers(cfg: dict) -> None:
    n, w = cfg["num_workers"], cfg["worker"]
    if not (isinstance(n, int) and n >= 1):
        raise gin_utils.GinConfigError(f"sweep_config.num_workers = {n!r}: must be a positive integer")
    if not (isinstance(w, int) and 0 <= w < n):
        raise gin_utils.GinConfigError(
            f"sweep_config.worker = {w!r}: must be one of 0 ... {n - 1} (sweep_config.num_workers = {n})"
        )


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
    # A selection on validation may choose any checkpoint that was the best when evaluated.
    keep = ["train.keep_best_checkpoints = True"] if cfg.get("selection") == "validation" else []
    train = (
        TRAIN,
        ["runs/train.gin", f"models/{run.size}.gin", cfg["task_gin"], *cfg["extra_gin_files"]],
        [f"MODEL_DIR = {model_dir!r}", *common, *cfg["train_bindings"], *keep],
    )
    evaluate = (
        EVAL,
        ["runs/eval.gin", cfg["task_gin"], *cfg["extra_gin_files"]],
        [
            f"CHECKPOINT_PATH = {model_dir!r}",
            f"EVAL_OUTPUT_DIR = {os.path.join(run_path(run, cfg), 'eval')!r}",
            f"SPLIT = {cfg['eval_split']!r}",
            "STEPS = 'latest'",
            # Only steps without a finished result are evaluated: what an interrupted
            # evaluation left of one is replaced.
            "OVERWRITE = True",
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
    when its run comes up, possibly hours in. A run (or pretraining) that already ran is
    reused only when its recorded config (MODEL_DIR/config.gin, eval/config.gin) is the
    one its command gives now: a grid never mixes runs of other settings. Leaves gin's
    config cleared."""
    import importlib

    commands = [
        (f"pretraining {size}", c, os.path.join(pretrain_dir(size, cfg), "model", "config.gin"))
        for size, c in pretrain_commands(runs, cfg)
    ]
    for run in runs:
        train, evaluate = run_commands(run, cfg)
        commands.append((f"run {run.name}", train, os.path.join(run_path(run, cfg), "model", "config.gin")))
        commands.append((f"run {run.name}", evaluate, os.path.join(run_path(run, cfg), "eval", "config.gin")))
    for name, (module, gin_files, bindings), recorded in commands:
        binary = importlib.import_module(module)  # registers its configurables
        gin.clear_config()
        try:
            gin_utils.parse_gin(gin_files, bindings, search_paths, binary.REQUIRED_MACROS)
        except gin_utils.GinConfigError as e:
            raise gin_utils.GinConfigError(f"{name}, {module.split('.')[-1]}: {e}") from e
        if files.path(recorded).is_file():
            _check_same_settings(name, recorded, gin.config_str(), cfg)
    gin.clear_config()


def settings_of(config_gin: str, sweep_dir: Optional[str] = None) -> str:
    """A run's config.gin without what differs between two runs of the same settings:
    where it wrote (MODEL_DIR, CHECKPOINT_PATH, EVAL_OUTPUT_DIR), the steps an evaluation
    scored, the vocabulary path the train binary binds from its INITIAL_CHECKPOINT_PATH,
    and SWEEP_DIR itself (a grid moved or copied, as docs/results keeps them)."""
    if sweep_dir is None:  # the sweep dir the run was made in, from where it wrote
        m = re.search(r"(?:MODEL_DIR|EVAL_OUTPUT_DIR) = \\?\s*'(.*)/runs/[^/']+/(?:model|eval)'", config_gin)
        m = m or re.search(r"MODEL_DIR = \\?\s*'(.*)/pretrain/[^/']+/model'", config_gin)
        sweep_dir = m.group(1) if m else None
    text = re.sub(r"(?m)^(MODEL_DIR|CHECKPOINT_PATH|EVAL_OUTPUT_DIR|STEPS) = (?:\\\n\s*)?.*\n", "", config_gin)
    text = re.sub(r"# Parameters for task_vocabulary:\n# =+\ntask_vocabulary\.spm_path = \\?\s*'[^']*'\n\n", "", text)
    if sweep_dir:
        text = text.replace(sweep_dir, "<SWEEP_DIR>")
    return text


def _check_same_settings(name: str, recorded: str, now: str, cfg: dict) -> None:
    import difflib

    before = settings_of(files.path(recorded).read_text(encoding="utf-8"))
    after = settings_of(now, cfg["sweep_dir"])
    if before == after:
        return
    changed = [
        line[1:].strip()
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---")) and line[1:].strip()
    ]
    raise cli.UserError(
        f"{name} in SWEEP_DIR {cfg['sweep_dir']} ran with other settings than its command gives now "
        f"({recorded}; differs in: {'; '.join(changed[:6])}{' ...' if len(changed) > 6 else ''}): a grid must not "
        "mix them. Run the grid with the settings it was made with, or give it a new SWEEP_DIR"
    )


def check_methods(cfg: dict) -> None:
    for method in cfg["methods"]:
        if method not in METHODS:
            raise gin_utils.GinConfigError(
                f"sweep_config.methods: unknown method {method!r}"
                f"{gin_utils.did_you_mean(method, METHODS)}; known: {', '.join(METHODS)}"
            )
    if cfg.get("selection", "last") not in results.SELECTIONS:
        raise gin_utils.GinConfigError(
            f"sweep_config.selection must be one of {', '.join(map(repr, results.SELECTIONS))}; "
            f"got {cfg.get('selection')!r}"
        )
    for name in ("token_budgets", "example_budgets"):
        budgets = cfg.get(name) or ()
        if budgets == results.AUTO:
            continue
        if isinstance(budgets, str):
            raise gin_utils.GinConfigError(
                f"sweep_config.{name} must be a list of positive numbers or {results.AUTO!r}; got {budgets!r}"
            )
        budgets = list(budgets)
        if budgets and cfg.get("selection") != "validation":
            raise gin_utils.GinConfigError(
                f"sweep_config.{name} reads checkpoints that validation selects within each budget: "
                "bind sweep_config.selection = 'validation'"
            )
        if any(isinstance(b, bool) or not isinstance(b, (int, float)) or not b > 0 for b in budgets):
            raise gin_utils.GinConfigError(f"sweep_config.{name} must be positive numbers; got {budgets}")
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


@contextlib.contextmanager
def _local_log(log_path: str) -> Iterator[str]:
    """A local file for a run's log (a child's stdout needs one): `log_path` itself, or for
    an object-store URL a local copy of it (holding what it held, as a log is appended to)
    uploaded whole when the block ends, however it ends."""
    if not files.is_remote(log_path):
        yield log_path
        return
    with tempfile.TemporaryDirectory(prefix="dss_sweep_log_") as tmp:
        local = os.path.join(tmp, files.path(log_path).name)
        if files.path(log_path).is_file():
            files.copy(log_path, local)
        try:
            yield local
        finally:
            if os.path.exists(local):
                files.upload(local, log_path)


def _naming(error: cli.UserError, local: str, log_path: str) -> cli.UserError:
    """`error` naming the log where it is kept (`log_path`), not its local copy."""
    return error if local == log_path else cli.UserError(str(error).replace(local, log_path))


def _run_binary(
    module: str, gin_files: list[str], bindings: list[str], search_paths: Sequence[str], log_path: str, timeout
) -> None:
    with _local_log(log_path) as local:
        try:
            _run_binary_logged(module, gin_files, bindings, search_paths, local, timeout)
        except cli.UserError as e:
            raise _naming(e, local, log_path) from None


def _run_binary_logged(
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
    with _local_log(log_path) as local:
        try:
            _run_in_process_logged(module, gin_files, bindings, search_paths, local)
        except cli.UserError as e:
            raise _naming(e, local, log_path) from None


def _run_in_process_logged(
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
    files.makedirs(run_dir)
    log = os.path.join(run_dir, f"{module.split('.')[-1]}.log")
    if cfg.get("in_process"):
        _run_in_process(module, gin_files, bindings, search_paths, log)
    else:
        _run_binary(module, gin_files, bindings, search_paths, log, cfg["timeout_per_run"])


def execute(run: Run, cfg: dict, search_paths: Sequence[str] = (".",)) -> dict:
    """Trains and evaluates one run unless its result is already there. With validation
    selection, the test split is scored at each checkpoint a reading selects (results.py)."""
    run_dir = run_path(run, cfg)
    done = results.run_result(run_dir, cfg)
    if done is not None:
        return done
    train, evaluate = run_commands(run, cfg)
    run_command(train, run_dir, cfg, search_paths)
    if cfg.get("selection") == "validation":
        needed = results.steps_to_evaluate(run_dir, cfg)
        if not needed:
            raise cli.UserError(
                f"{run.name}: no validation evaluation selects a checkpoint ({run_dir}/model/validation/"
                "metrics.jsonl); the grid's train_bindings need EVAL_PERIOD > 0"
            )
        steps = [s for s in needed if s not in results.evaluated_steps(run_dir)]
        module, gin_files, bindings = evaluate
        evaluate = (module, gin_files, [*bindings, f"STEPS = {steps}"]) if steps else None
    if evaluate is not None:
        run_command(evaluate, run_dir, cfg, search_paths)
    result = results.run_result(run_dir, cfg)
    if result is None:
        raise RuntimeError(f"{run.name}: the eval binary wrote no metrics.json under {run_dir}/eval")
    return result


def finished(runs: list[Run], cfg: dict) -> dict[str, dict]:
    """{run name: its selected test metrics} of the runs whose evaluation finished."""
    done = {run.name: results.run_result(run_path(run, cfg), cfg) for run in runs}
    return {name: r for name, r in done.items() if r is not None}


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
    path = os.path.join(cfg["sweep_dir"], CODE_FILE)
    now = code_version()
    if now["modified"]:
        logging.warning("this checkout of dss_jax has uncommitted changes: %s cannot tell them apart", path)
    if not files.path(path).exists():
        files.makedirs(cfg["sweep_dir"])
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


PRETRAINED_FILE = "pretrained.json"  # pretrain/<size>/pretrained.json: its run has finished
WAIT_SECONDS = 30.0  # how often a worker looks for worker 0's pretraining


def run_all(runs: list[Run], cfg: dict, search_paths: Sequence[str]) -> dict[str, dict]:
    """The pretraining runs the grid starts from, then every run of this worker (every
    num_workers-th of the plan, from its `worker`-th): {run name: its metrics}."""
    files.makedirs(cfg["sweep_dir"])
    worker, num_workers = cfg.get("worker", 0), cfg.get("num_workers", 1)
    numbered = list(enumerate(runs, start=1))[worker::num_workers]
    # Only what a run still to do starts from: a finished grid is not pretrained again.
    done = finished([run for _, run in numbered], cfg)
    for size, command in pretrain_commands([run for _, run in numbered if run.name not in done], cfg):
        marker = files.path(os.path.join(pretrain_dir(size, cfg), PRETRAINED_FILE))
        if worker > 0:  # worker 0 pretrains: two trainings in one MODEL_DIR would clash
            if not marker.is_file():
                print(f"pretraining {size}: waiting for worker 0 to finish it ({marker})", flush=True)
            while not marker.is_file():
                time.sleep(WAIT_SECONDS)
            continue
        t0 = time.time()
        print(f"pretraining {size} ...", flush=True)
        run_command(command, pretrain_dir(size, cfg), cfg, search_paths)
        files.makedirs(pretrain_dir(size, cfg))
        files.atomic_write(str(marker), json.dumps({"size": size}) + "\n")
        print(f"pretraining {size}: done ({time.time() - t0:.0f}s)", flush=True)
    outcomes = {}
    for i, run in numbered:
        t0 = time.time()
        logging.info("[%d/%d] %s", i, len(runs), run.name)
        print(f"[{i}/{len(runs)}] {run.name} ...", flush=True)
        outcomes[run.name] = execute(run, cfg, search_paths)
        print(
            f"[{i}/{len(runs)}] {run.name}: {cfg['metric']}={outcomes[run.name].get(cfg['metric'])} "
            f"({time.time() - t0:.0f}s)",
            flush=True,
        )
    return outcomes


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
    check_workers(cfg)
    runs = plan(cfg)
    check_sweep_dir(cfg, FLAGS.gin_file, FLAGS.gin_search_paths)
    if not cfg["report_only"]:
        check_runs(runs, cfg, FLAGS.gin_search_paths)  # before anything is written
        check_code(cfg)
        run_all(runs, cfg, FLAGS.gin_search_paths)
    outcomes = finished(runs, cfg)  # every worker's runs that have finished
    if len(outcomes) < len(runs):
        print(f"{len(runs) - len(outcomes)} of {len(runs)} runs have not finished: not in the results", flush=True)
    report(runs, outcomes, cfg)


# What the sweep itself writes in SWEEP_DIR (the runs go to runs/ and pretrain/).
SWEEP_FILES = (CODE_FILE, "results.csv", "results.md", "figure.png", "budgets.csv", "figure_budgets.png")


def check_sweep_dir(cfg: dict, gin_files: Sequence[str], search_paths: Sequence[str]) -> None:
    """The refusals of output_paths for SWEEP_DIR (in a run or a checkpoint, such as a
    checkpoint the grid starts from; its files replacing a gin file the sweep or its runs
    read). An existing SWEEP_DIR is continued (see `check_code`)."""
    dirs = [os.path.abspath(p) for p in [*search_paths, gin_utils.REPO_GIN_DIR]]
    names = [*gin_files, cfg["task_gin"], *cfg.get("extra_gin_files", ()), *cfg.get("pretrain_gin_files", ())]
    inputs = {}
    for name in names:
        try:
            inputs[f"gin file {name}"] = gin_utils.resolve_gin_file(name, dirs)
        except gin_utils.GinConfigError:
            pass  # named by check_runs
    output_paths.check_outputs(
        [output_paths.Output("SWEEP_DIR", cfg["sweep_dir"], directory=True, files=SWEEP_FILES)], inputs=inputs
    )


def report(runs: list[Run], outcomes: dict[str, dict], cfg: dict) -> None:
    """results.csv, results.md (budgets.csv) and the figures into SWEEP_DIR, and the table printed."""
    out, metric, title = cfg["sweep_dir"], cfg["metric"], os.path.basename(cfg["task_gin"])
    rows = results.collect(runs, outcomes, metric, out, cfg)
    results.plot(rows, metric, os.path.join(out, "figure.png"), title=title)
    written = ["results.csv", "results.md", "figure.png"]
    if files.path(os.path.join(out, "budgets.csv")).exists() and rows:
        budget_rows = results.read_budgets(os.path.join(out, "budgets.csv"))
        results.plot_budgets(budget_rows, metric, os.path.join(out, "figure_budgets.png"), title=title)
        written += ["budgets.csv", "figure_budgets.png"]
    print(files.path(os.path.join(out, "results.md")).read_text(encoding="utf-8"))
    print(f"results: {out}/{', '.join(written)}")


if __name__ == "__main__":
    gin_utils.define_gin_flags()
    cli.run(main, "sweep")
