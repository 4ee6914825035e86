"""The sweep: a two-point miniature end to end through the real binaries, the single-task
ablation's targets, and the table/figure built from the runs' own metrics; the same with
SWEEP_DIR on gs://."""

import csv
import io
import json
import math
import os
import subprocess
import sys
import threading
import time

import pytest

import gin
from conftest import REPO_ROOT, SMALL_SYNTHETIC_GIN
from dss_jax import cli, files, gin_utils, output_paths, results, sweep
from dss_jax.data import options as dss_options
from dss_jax.data import paired as dss_paired
from dss_jax.data.cache import CacheRecord, TeacherSample


def test_single_task_targets_and_label_extraction():
    rec = CacheRecord(
        id="a", input="2 and 3?", label="(2 + 3)", samples=(TeacherSample(rationale="2 + 3 = 5.", label="(2 + 3)"),)
    )
    opts = dss_options.TaskOptions(label_target="rationale_then_label")
    (ex,), dropped = dss_paired.training_examples([rec], opts)
    assert dropped == 0
    assert ex["label_targets"] == "2 + 3 = 5. So the answer is: (2 + 3)"
    assert dss_options.split_single_task(ex["label_targets"]) == ("2 + 3 = 5.", "(2 + 3)")
    assert dss_options.split_single_task("2 + 3 = 5.") == ("2 + 3 = 5.", "")
    # Evaluation keeps the gold label alone as the target.
    (ev,), _ = dss_paired.evaluation_examples([rec], opts)
    assert ev["label_targets"] == "(2 + 3)"
    with pytest.raises(ValueError, match="label_target"):
        dss_options.TaskOptions(label_target="both")


def test_plan_covers_the_grid_and_methods_bind_the_baselines():
    cfg = dict(
        methods=["finetune", "distill", "dss", "single_task"],
        sizes=["tiny"],
        fractions=[0.5, 1.0],
        seeds=[0, 1],
        rationale_weights=[0.5, 1.0],
        dss_label_source="gt",
        initial_checkpoints=None,
    )
    runs = sweep.plan(cfg)
    assert len(runs) == (3 + 2) * 2 * 2  # dss has two λ
    assert len({r.name for r in runs}) == len(runs)
    finetune = sweep.run_bindings(next(r for r in runs if r.method == "finetune"), cfg)
    assert "RATIONALE_WEIGHT = 0.0" in finetune and "LABEL_SOURCE = 'gt'" in finetune
    distill = sweep.run_bindings(next(r for r in runs if r.method == "distill"), cfg)
    assert "LABEL_SOURCE = 'teacher'" in distill and "RATIONALE_WEIGHT = 0.0" in distill
    dss = sweep.run_bindings(next(r for r in runs if r.method == "dss" and r.rationale_weight == 0.5), cfg)
    assert "RATIONALE_WEIGHT = 0.5" in dss


def _sweep(tmp_path, out, *bindings, timeout=900) -> subprocess.CompletedProcess:
    """`python -m dss_jax.sweep` on tmp_path's recipe.gin (RECIPE) and mini.gin (MINI), into
    `out`, on one CPU device with its own data cache."""
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO_ROOT),
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        DSS_CACHE_DIR=str(tmp_path / "cache"),
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
    )
    cmd = [
        sys.executable,
        "-m",
        "dss_jax.sweep",
        f"--gin_file={tmp_path / 'recipe.gin'}",
        f"--gin.SWEEP_DIR='{out}'",
        f"--gin.MINI='{tmp_path / 'mini.gin'}'",
        *bindings,
    ]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


RECIPE = """
sweep_config.sweep_dir = %SWEEP_DIR
sweep_config.task_gin = 'tasks/synthetic.gin'
sweep_config.methods = ['dss']
sweep_config.sizes = ['tiny']
sweep_config.fractions = [0.5, 1.0]
sweep_config.seeds = [0]
sweep_config.extra_gin_files = [%MINI]
sweep_config.train_bindings = ['TRAIN_STEPS = 3', 'BATCH_SIZE = 4', 'train.log_period = 1']
sweep_config.eval_bindings = ['MAX_EXAMPLES = 12', 'BATCH_SIZE = 4']
"""

MINI = SMALL_SYNTHETIC_GIN


def test_two_point_sweep_end_to_end(tmp_path):
    """The sweep in one process (as sweeps/comparison.gin runs it): the table, the figure,
    resumability; and one of its runs as subprocesses gives the same losses, predictions
    and scores."""
    (tmp_path / "recipe.gin").write_text(RECIPE)
    (tmp_path / "mini.gin").write_text(MINI)

    def sweep_in(out, *bindings, timeout=900):
        r = _sweep(tmp_path, out, *bindings, timeout=timeout)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]

    out = tmp_path / "sweep"
    sweep_in(out, "--gin.sweep_config.in_process=True")
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["fraction"]) for r in rows] == [0.5, 1.0]
    for row in rows:
        run_dir = out / "runs" / row["run"]
        (metrics_path,) = list((run_dir / "eval").glob("step_*/metrics.json"))
        assert metrics_path.parent.name == "step_3"
        assert float(row["accuracy"]) == json.loads(metrics_path.read_text())["accuracy"]
        assert (run_dir / "model" / "checkpoint_3").is_dir()
        assert "(in process) dss_jax.train" in (run_dir / "train.log").read_text()
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| dss | - | tiny | 0.5 |" in (out / "results.md").read_text()
    # Resumable: a second call trains and evaluates nothing again.
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/eval/step_*/metrics.json")}
    sweep_in(out, "--gin.sweep_config.in_process=True", timeout=300)
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/eval/step_*/metrics.json")} == before
    # Through the binaries as subprocesses: the same losses, predictions and metrics.
    sub = tmp_path / "sweep_subprocesses"
    sweep_in(sub, "--gin.sweep_config.fractions=[1.0]")
    (run,) = [row["run"] for row in rows if float(row["fraction"]) == 1.0]
    a, b = sub / "runs" / run, out / "runs" / run
    losses = lambda d: [
        (m["step"], m["loss"]) for m in map(json.loads, (d / "model/train/metrics.jsonl").read_text().splitlines())
    ]
    assert losses(a) == losses(b)
    assert (a / "eval/step_3/predictions.jsonl").read_text() == (b / "eval/step_3/predictions.jsonl").read_text()
    scores = lambda d: {  # not timings or paths
        k: v
        for k, v in json.loads((d / "eval/step_3/metrics.json").read_text()).items()
        if "per_second" not in k and k != "checkpoint"
    }
    assert scores(a) == scores(b) and "accuracy" in scores(a)
    assert "(in process)" not in (a / "train.log").read_text()


def _cfg(tmp_path, **kw):
    cfg = dict(
        sweep_dir=str(tmp_path / "sweep"),
        task_gin="tasks/synthetic.gin",
        methods=["dss"],
        sizes=["tiny"],
        fractions=[1.0],
        seeds=[0],
        rationale_weights=[1.0],
        dss_label_source="gt",
        initial_checkpoints=None,
        train_bindings=[],
        eval_bindings=[],
        extra_gin_files=[],
        eval_split="test",
        timeout_per_run=None,
        metric="accuracy",
    )
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize(
    "change,error",
    [
        (
            dict(eval_bindings=["SPLT = 'validation'"]),
            r"run dss_lam1_tiny_frac1_seed0, eval: macro SPLT .*did you mean SPLIT\?",
        ),
        (
            dict(train_bindings=["train.log_perod = 1"]),
            r"run dss_lam1_tiny_frac1_seed0, train: .*did you mean log_period",
        ),
        (dict(sizes=["tiny", "bse"]), r"run dss_lam1_bse_frac1_seed0, train: --gin_file=models/bse.gin: not found"),
    ],
)
def test_every_run_is_checked_before_the_first_starts(change, error, tmp_path):
    # A mistake in what the sweep hands its runs would otherwise stop it when that run
    # comes up, possibly hours in; the sweep binary calls check_runs before writing anything.
    cfg = _cfg(tmp_path, **change)
    with pytest.raises(gin_utils.GinConfigError, match=error):
        sweep.check_runs(sweep.plan(cfg), cfg)
    sweep.check_runs(sweep.plan(_cfg(tmp_path)), _cfg(tmp_path))  # the unchanged grid is fine
    assert not (tmp_path / "sweep").exists()


def test_paths_with_quotes_reach_the_runs_intact(tmp_path):
    cfg = _cfg(tmp_path / "it's", initial_checkpoints={"tiny": "/ckpt/o'brien"})
    sweep.check_runs(sweep.plan(cfg), cfg)
    train_bindings = sweep.run_commands(sweep.plan(cfg)[0], cfg)[0][2]
    gin.parse_config(train_bindings[:1] + [b for b in train_bindings if b.startswith("INITIAL")])
    assert gin.query_parameter("INITIAL_CHECKPOINT_PATH/macro.value") == "/ckpt/o'brien"
    assert "it's" in gin.query_parameter("MODEL_DIR/macro.value")
    gin.clear_config()


def test_a_scratch_control_starts_from_scratch_when_its_gin_files_name_a_checkpoint(tmp_path):
    # e.g. a sweep over a config that starts from a pretrained student (the quickstart's):
    # its control named scratch must not silently start from that student too.
    (tmp_path / "pretrained_start.gin").write_text("INITIAL_CHECKPOINT_PATH = '/ckpt/pre'\n")
    cfg = _cfg(
        tmp_path,
        extra_gin_files=["pretrained_start.gin"],
        initializations={"pretrained": "/ckpt/other", "scratch": None},
    )
    starts = {}
    for run in sweep.plan(cfg):
        _, gin_files, bindings = sweep.run_commands(run, cfg)[0]
        gin_utils.parse_gin(gin_files, bindings, [str(tmp_path), "."])
        starts[run.init] = gin.query_parameter("INITIAL_CHECKPOINT_PATH/macro.value")
        gin.clear_config()
    assert starts == {"pretrained": "/ckpt/other", "scratch": None}


def test_unknown_method_is_named_with_the_nearest():
    with pytest.raises(
        gin_utils.GinConfigError,
        match=r"sweep_config.methods: unknown method 'finetun'; "
        r"did you mean finetune\?",
    ):
        sweep.check_methods({"methods": ["dss", "finetun"]})


def test_runs_search_the_sweeps_gin_search_paths(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(
        sweep.subprocess, "run", lambda cmd, **kw: commands.append(cmd) or subprocess.CompletedProcess(cmd, 0)
    )
    cfg = _cfg(tmp_path, task_gin="my_task.gin")
    with pytest.raises(RuntimeError, match="wrote no metrics.json"):  # nothing ran
        sweep.execute(sweep.plan(cfg)[0], cfg, [str(tmp_path / "my_gin"), "."])
    assert [c[2] for c in commands] == ["dss_jax.train", "dss_jax.eval"]
    assert all(f"--gin_search_paths={tmp_path / 'my_gin'},." in c for c in commands)


def test_initializations_give_a_pretrained_grid_and_a_restricted_scratch_control(tmp_path):
    cfg = _cfg(
        tmp_path,
        methods=["finetune", "distill", "dss_gt", "dss_teacher", "single_task"],
        fractions=[0.1, 1.0],
        seeds=[0, 1, 2],
        initializations={"pretrained": "/ckpt/pre", "scratch": None},
        init_methods={"scratch": ["finetune", "dss_gt"]},
    )
    sweep.check_methods(cfg)
    runs = sweep.plan(cfg)
    assert len(runs) == 5 * 2 * 3 + 2 * 2 * 3 and len({r.name for r in runs}) == len(runs)
    assert {r.method for r in runs if r.init == "scratch"} == {"finetune", "dss_gt"}
    pre = sweep.run_bindings(next(r for r in runs if r.init == "pretrained" and r.method == "dss_teacher"), cfg)
    assert "INITIAL_CHECKPOINT_PATH = '/ckpt/pre'" in pre and "LABEL_SOURCE = 'teacher'" in pre
    assert "RATIONALE_WEIGHT = 1.0" in pre
    scratch = sweep.run_bindings(next(r for r in runs if r.init == "scratch" and r.method == "dss_gt"), cfg)
    assert "INITIAL_CHECKPOINT_PATH = None" in scratch and "LABEL_SOURCE = 'gt'" in scratch
    with pytest.raises(gin_utils.GinConfigError, match="init_methods: 'scrach' is not one of"):
        sweep.check_methods({**cfg, "init_methods": {"scrach": ["finetune"]}})
    with pytest.raises(gin_utils.GinConfigError, match=r"\['distil'\] not in sweep_config.methods"):
        sweep.check_methods({**cfg, "init_methods": {"scratch": ["distil"]}})


def test_results_report_each_runs_compute_and_the_figure_has_a_panel_per_start(tmp_path):
    cfg = _cfg(
        tmp_path,
        methods=["finetune", "dss_gt"],
        fractions=[0.5, 1.0],
        seeds=[0, 1],
        initializations={"pretrained": "/ckpt/pre", "scratch": None},
    )
    runs = sweep.plan(cfg)
    out = tmp_path / "sweep"
    outcomes = {}
    for i, run in enumerate(runs):
        train_dir = out / "runs" / run.name / "model" / "train"
        train_dir.mkdir(parents=True)
        # Two logged windows: steps 1-2 and 3-4.
        train_dir.joinpath("metrics.jsonl").write_text(
            json.dumps({"step": 2, "real_tokens_per_step": 100.0, "examples_per_step": 8, "rows_per_step": 3})
            + "\n"
            + json.dumps({"step": 4, "real_tokens_per_step": 50.0, "examples_per_step": 8, "rows_per_step": 2})
            + "\n"
        )
        outcomes[run.name] = {"accuracy": 0.1 * (i % 7)}
    rows = results.collect(runs, outcomes, "accuracy", str(out), cfg)
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(runs)
    first = table[0]
    assert (first["steps"], first["examples_per_step"], first["rows_per_step"], first["real_tokens"]) == (
        "4",
        "8.0",
        "2.5",
        "300",
    )
    assert {r["initial_checkpoint"] for r in table if r["init"] == "pretrained"} == {"/ckpt/pre"}
    assert {r["initial_checkpoint"] for r in table if r["init"] == "scratch"} == {""}
    results.plot(rows, "accuracy", str(out / "figure.png"), title="toy")
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| dss_gt | scratch | tiny | 0.5 |" in (out / "results.md").read_text()


def test_the_sweeps_own_pretraining_runs_first_and_its_runs_start_from_it(tmp_path, monkeypatch):
    cfg = _cfg(
        tmp_path,
        methods=["finetune", "dss_gt"],
        sizes=["tiny", "small"],
        initializations={"pretrained": "pretrain", "scratch": None},
        init_methods={"scratch": ["finetune"]},
        pretrain_gin_files=["runs/pretrain.gin", "tasks/synthetic_pretrain.gin"],
        pretrain_bindings=["TRAIN_STEPS = 7"],
    )
    sweep.check_methods(cfg)
    runs = sweep.plan(cfg)
    sweep.check_runs(runs, cfg)  # the pretraining commands parse like the runs'
    order = []

    def fake(command, run_dir, cfg, search_paths):
        module, gin_files, bindings = command
        order.append((module, gin_files, bindings))
        if module == sweep.EVAL:  # an evaluation that finished
            out = next(b for b in bindings if b.startswith("EVAL_OUTPUT_DIR")).split(" = ")[1].strip("'")
            os.makedirs(os.path.join(out, "step_7"))
            open(os.path.join(out, "step_7", "metrics.json"), "w").write('{"accuracy": 0.5}')

    monkeypatch.setattr(sweep, "run_command", fake)
    results = sweep.run_all(runs, cfg, ["."])
    assert len(results) == len(runs) == 2 * 2 + 2
    pretraining = order[:2]  # one per size, before any run
    assert [files[-1] for _, files, _ in pretraining] == ["models/small.gin", "models/tiny.gin"]
    assert all(files[:2] == cfg["pretrain_gin_files"] and "TRAIN_STEPS = 7" in b for _, files, b in pretraining)
    model_dirs = {files[-1]: b[0].split(" = ")[1] for _, files, b in pretraining}
    for run in runs:
        start = [b for b in sweep.run_bindings(run, cfg) if b.startswith("INITIAL_CHECKPOINT_PATH")]
        if run.init == "pretrained":
            assert start == [f"INITIAL_CHECKPOINT_PATH = {model_dirs[f'models/{run.size}.gin']}"]
        else:
            assert start == ["INITIAL_CHECKPOINT_PATH = None"]
    with pytest.raises(gin_utils.GinConfigError, match="pretrain_gin_files is empty"):
        sweep.check_methods({**cfg, "pretrain_gin_files": []})


def test_a_grid_is_continued_only_by_the_code_that_started_it(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    version = {"commit": "a" * 40, "modified": False}
    monkeypatch.setattr(sweep, "code_version", lambda: dict(version))
    sweep.check_code(cfg)  # the first call records the commit
    assert json.loads((tmp_path / "sweep" / "code.json").read_text()) == version
    sweep.check_code(cfg)  # the same commit continues
    version["commit"] = "b" * 40
    with pytest.raises(
        cli.UserError,
        match=r"runs made by dss_jax at commit aaaaaaaaaaaa .* at bbbbbbbbbbbb\. "
        r"Continue the grid from that commit \(git worktree add DIR aaaaaaaaaaaa\)",
    ):
        sweep.check_code(cfg)
    sweep.check_code(dict(cfg, allow_other_code=True))  # knowingly
    version["commit"] = None  # not a git checkout: nothing to compare
    sweep.check_code(cfg)
    assert json.loads((tmp_path / "sweep" / "code.json").read_text())["commit"] == "a" * 40  # never rewritten


def test_the_code_version_is_this_checkouts_commit():
    v = sweep.code_version()
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert v["commit"] == head.stdout.strip() and isinstance(v["modified"], bool)


def test_a_sweep_dir_of_only_the_runs_metrics_files_is_complete(tmp_path, monkeypatch):
    """What docs/results/comparison/ keeps of each finished run (its eval metrics.json and
    train metrics.jsonl) is all a sweep needs: copied into a new SWEEP_DIR, no run is
    trained or evaluated again, and the table is written from them."""
    cfg = _cfg(tmp_path, methods=["finetune", "dss_gt"], fractions=[0.5, 1.0])
    runs = sweep.plan(cfg)
    for i, run in enumerate(runs):
        run_dir = tmp_path / "sweep" / "runs" / run.name
        (run_dir / "eval" / "step_800").mkdir(parents=True)
        (run_dir / "eval" / "step_800" / "metrics.json").write_text(json.dumps({"accuracy": 0.25 * i}))
        (run_dir / "model" / "train").mkdir(parents=True)
        (run_dir / "model" / "train" / "metrics.jsonl").write_text(
            json.dumps({"step": 800, "real_tokens_per_step": 10.0, "examples_per_step": 16, "rows_per_step": 4}) + "\n"
        )
    commands = []
    monkeypatch.setattr(sweep, "run_command", lambda command, *a: commands.append(command))
    outcomes = sweep.run_all(runs, cfg, ["."])
    assert commands == [] and [outcomes[r.name]["accuracy"] for r in runs] == [0.0, 0.25, 0.5, 0.75]
    results.collect(runs, outcomes, "accuracy", cfg["sweep_dir"], cfg)
    with open(tmp_path / "sweep" / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["accuracy"], r["steps"], r["real_tokens"]) for r in table][-1] == ("0.75", "800", "8000")


def test_workers_share_a_grid_and_wait_for_worker_0s_pretraining(tmp_path, monkeypatch):
    """One sweep process trained one run at a time: two on a 2-core CPU, or one per GPU,
    could only be had by splitting the grid by hand, and two processes pretraining into
    one MODEL_DIR would clash."""
    cfg = _cfg(
        tmp_path,
        methods=["finetune", "distill", "dss_gt"],
        fractions=[0.5, 1.0],
        initializations={"pretrained": "pretrain"},
        pretrain_gin_files=["runs/pretrain.gin", "tasks/synthetic_pretrain.gin"],
        pretrain_bindings=[],
        num_workers=2,
    )
    runs = sweep.plan(cfg)
    monkeypatch.setattr(sweep, "WAIT_SECONDS", 0.01)
    calls, pretrained = [], threading.Event()

    def fake(command, run_dir, cfg, search_paths):
        module, gin_files, bindings = command
        calls.append((cfg["worker"], module, os.path.basename(run_dir), pretrained.is_set()))
        os.makedirs(run_dir, exist_ok=True)
        if run_dir.startswith(sweep.pretrain_dir("tiny", cfg)):
            time.sleep(0.2)  # worker 1 is waiting meanwhile
            pretrained.set()
        elif module == sweep.EVAL:
            out = next(b for b in bindings if b.startswith("EVAL_OUTPUT_DIR")).split(" = ")[1].strip("'")
            os.makedirs(os.path.join(out, "step_7"))
            open(os.path.join(out, "step_7", "metrics.json"), "w").write('{"accuracy": 0.5}')

    monkeypatch.setattr(sweep, "run_command", fake)
    second = threading.Thread(target=sweep.run_all, args=(runs, {**cfg, "worker": 1}, ["."]), daemon=True)
    second.start()  # first: it must wait for worker 0's pretraining
    mine = sweep.run_all(runs, {**cfg, "worker": 0}, ["."])
    second.join(timeout=60)
    assert not second.is_alive()
    assert [c for c in calls if c[2] == "tiny"] == [(0, sweep.TRAIN, "tiny", False)]  # pretrained once, by worker 0
    assert all(after for worker, _, _, after in calls if worker == 1)
    trained = {
        w: [n for worker, module, n, _ in calls if (worker, module) == (w, sweep.TRAIN) and n != "tiny"] for w in (0, 1)
    }
    assert trained[0] == [r.name for r in runs[0::2]] == list(mine)
    assert trained[1] == [r.name for r in runs[1::2]]
    assert set(sweep.finished(runs, cfg)) == {r.name for r in runs}  # what each worker reports at its end
    with pytest.raises(gin_utils.GinConfigError, match=r"sweep_config.worker = 2: must be one of 0 ... 1"):
        sweep.check_workers({**cfg, "worker": 2})


def _finished_run(sweep_dir, name, accuracy):
    """What docs/results keeps of a finished run: its eval metrics.json and train metrics.jsonl."""
    run = os.path.join(sweep_dir, "runs", name)
    os.makedirs(os.path.join(run, "eval", "step_800"))
    with open(os.path.join(run, "eval", "step_800", "metrics.json"), "w") as f:
        json.dump({"accuracy": accuracy}, f)
    os.makedirs(os.path.join(run, "model", "train"))
    with open(os.path.join(run, "model", "train", "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 800, "real_tokens_per_step": 10.0, "examples_per_step": 16, "rows_per_step": 4}))


def test_differences_are_read_against_two_standard_errors():
    def group(method, mean, std, n=3, init="pretrained", fraction=1.0, lam=0.0):
        return dict(
            method=method, init=init, size="tiny", fraction=fraction, rationale_weight=lam, n=n, mean=mean, std=std
        )

    groups = [
        group("finetune", 0.30, 0.03),
        group("dss_gt", 0.40, 0.03, lam=1.0),  # Δ .10, SE sqrt(2 x .03² / 3) = .0245: larger
        group("finetune", 0.30, 0.03, fraction=0.5),
        group("dss_gt", 0.33, 0.03, fraction=0.5, lam=1.0),  # Δ .03 < 2 SE: not
        group("finetune", 0.30, 0.0, n=1, init="scratch"),
        group("dss_gt", 0.50, 0.0, n=1, init="scratch", lam=1.0),  # one seed: no reading
        group("distill", 0.2, 0.01),  # no dss_teacher: no row
    ]
    diffs = results.differences(groups, results.default_differences("gt"))
    got = {(d["init"], d["fraction"]): d for d in diffs}
    assert len(diffs) == 3 and {d["method"] + "-" + d["baseline"] for d in diffs} == {"dss_gt-finetune"}
    assert got[("pretrained", 1.0)]["diff"] == pytest.approx(0.10)
    assert got[("pretrained", 1.0)]["se"] == pytest.approx((2 * 0.03**2 / 3) ** 0.5)
    assert got[("pretrained", 1.0)]["larger"] and not got[("pretrained", 0.5)]["larger"]
    assert math.isnan(got[("scratch", 1.0)]["se"]) and not got[("scratch", 1.0)]["larger"]
    # Each comparison is between methods trained on the same labels.
    assert ("dss", "distill") not in results.default_differences("gt")
    assert ("dss", "finetune") not in results.default_differences("teacher")
    assert ("dss_teacher", "single_task") in results.default_differences("teacher")


def test_report_only_writes_the_finished_runs_and_trains_nothing(tmp_path):
    """A grid still running, or the metrics docs/results keeps, gives its table without a
    run trained or a pretraining started, and says how many runs are missing."""
    out = tmp_path / "sweep"
    runs = {
        "finetune_tiny_cpu_pretrained_frac1_seed0": 0.3,
        "finetune_tiny_cpu_pretrained_frac1_seed1": 0.32,
        "dss_gt_lam1_tiny_cpu_pretrained_frac1_seed0": 0.6,
        "dss_gt_lam1_tiny_cpu_pretrained_frac1_seed1": 0.66,
    }
    for name, accuracy in runs.items():
        _finished_run(str(out), name, accuracy)
    r = subprocess.run(
        [sys.executable, "-m", "dss_jax.sweep", "--gin_file=sweeps/comparison.gin"]
        + [f"--gin.SWEEP_DIR='{out}'", "--gin.sweep_config.report_only=True"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "80 of 84 runs have not finished" in r.stdout
    with open(out / "results.csv") as f:
        assert sorted(row["run"] for row in csv.DictReader(f)) == sorted(runs)
    assert "| dss_gt − finetune | pretrained | tiny_cpu | 1 | 1 | +0.3200 | 0.0316 | yes |" in r.stdout
    assert sorted(os.listdir(out)) == ["figure.png", "results.csv", "results.md", "runs"]  # nothing trained


def test_a_finished_grid_is_not_pretrained_again(tmp_path, monkeypatch):
    cfg = _cfg(
        tmp_path,
        methods=["finetune"],
        initializations={"pretrained": "pretrain", "scratch": None},
        pretrain_gin_files=["runs/pretrain.gin", "tasks/synthetic_pretrain.gin"],
        pretrain_bindings=[],
    )
    runs = sweep.plan(cfg)
    commands = []
    monkeypatch.setattr(sweep, "run_command", lambda command, *a: commands.append(command[0]))
    for run in runs:  # e.g. the metrics files docs/results keeps, without checkpoints
        _finished_run(cfg["sweep_dir"], run.name, 0.5)
    assert set(sweep.run_all(runs, cfg, ["."])) == {run.name for run in runs}
    assert commands == []  # no pretraining: nothing starts from it


def test_a_sweep_selecting_on_validation_scores_the_selected_checkpoints_on_test(tmp_path):
    """Validation selection through the real binaries: every run keeps the checkpoints that
    were the best when evaluated, the test split is scored at each one a reading selects
    (and nowhere else), the tables and figures of both readings are written, and a second
    call trains and evaluates nothing."""
    (tmp_path / "recipe.gin").write_text(
        RECIPE.replace("TRAIN_STEPS = 3", "TRAIN_STEPS = 8', 'EVAL_PERIOD = 2")
        + "sweep_config.fractions = [1.0]\nsweep_config.methods = ['finetune', 'dss_gt']\n"
        + "sweep_config.selection = 'validation'\nsweep_config.in_process = True\n"
        + "sweep_config.token_budgets = [4000, 100000]\nsweep_config.example_budgets = [40]\n"
    )
    (tmp_path / "mini.gin").write_text(MINI + "make_train_eval_hook.max_examples = 8\n")
    out = tmp_path / "sweep"
    r = _sweep(tmp_path, out)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["method"] for row in rows] == ["finetune", "dss_gt"]
    cfg = {"sweep_dir": str(out), "selection": "validation", "token_budgets": [4000, 100000], "example_budgets": [40]}
    for row in rows:
        run_dir = out / "runs" / row["run"]
        evals = [json.loads(line) for line in (run_dir / "model/validation/metrics.jsonl").read_text().splitlines()]
        assert [e["step"] for e in evals] == [2, 4, 6, 8]
        best = results.choices(str(run_dir), cfg)[0].evaluation
        assert int(row["selected_step"]) == best.step and int(row["selected_real_tokens"]) == best.real_tokens_seen
        tested = sorted(int(p.parent.name[5:]) for p in (run_dir / "eval").glob("step_*/metrics.json"))
        assert tested == results.steps_to_evaluate(str(run_dir), cfg)
        assert (
            float(row["accuracy"])
            == json.loads((run_dir / f"eval/step_{best.step}/metrics.json").read_text())["accuracy"]
        )
        kept = sorted(int(p.name.split("_")[1]) for p in (run_dir / "model").glob("checkpoint_*"))
        assert set(tested) <= set(kept)
    budgets = results.read_budgets(str(out / "budgets.csv"))
    assert len(budgets) == 2 * 3
    assert all(b["accuracy"] == "" for b in budgets if b["budget"] == 100000)  # 8 steps, no early stopping
    assert all(b["accuracy"] != "" for b in budgets if b["budget"] != 100000)  # evaluated within, and reached
    for name in ("results.md", "figure.png", "figure_budgets.png"):
        assert (out / name).exists()
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/eval/step_*/metrics.json")}
    r = _sweep(tmp_path, out, timeout=300)
    assert (
        r.returncode == 0 and {p: p.stat().st_mtime_ns for p in out.glob("runs/*/eval/step_*/metrics.json")} == before
    )


def test_a_run_is_reused_only_with_the_settings_it_ran_with(tmp_path):
    """A SWEEP_DIR whose runs ran with other settings (here TRAIN_STEPS, or an eval
    binding) is refused before anything runs, naming the run and the setting; the same
    settings, or the same grid moved to another directory, are reused."""
    import importlib
    import shutil

    cfg = _cfg(tmp_path, train_bindings=["TRAIN_STEPS = 6"], eval_bindings=["MAX_EXAMPLES = 12"])
    runs = sweep.plan(cfg)
    (run,) = runs
    train, evaluate = sweep.run_commands(run, cfg)
    for (module, gin_files, bindings), where in ((train, "model"), (evaluate, "eval")):
        importlib.import_module(module)  # registers its configurables
        gin_utils.parse_gin(gin_files, bindings, ["."])
        os.makedirs(os.path.join(sweep.run_path(run, cfg), where))
        with open(os.path.join(sweep.run_path(run, cfg), where, "config.gin"), "w") as f:
            f.write(gin.config_str())  # what the binaries record
        gin.clear_config()
    sweep.check_runs(runs, cfg)
    with pytest.raises(
        cli.UserError, match=r"run dss_lam1_tiny_frac1_seed0 .* differs in: TRAIN_STEPS = 6; TRAIN_STEPS = 12"
    ):
        sweep.check_runs(runs, {**cfg, "train_bindings": ["TRAIN_STEPS = 12"]})
    with pytest.raises(cli.UserError, match=r"eval/config.gin; differs in: MAX_EXAMPLES = 12; MAX_EXAMPLES = 20"):
        sweep.check_runs(runs, {**cfg, "eval_bindings": ["MAX_EXAMPLES = 20"]})
    moved = str(tmp_path / "moved")
    shutil.copytree(cfg["sweep_dir"], moved)
    sweep.check_runs(runs, {**cfg, "sweep_dir": moved})


def test_the_sweep_dir_is_checked_against_runs_checkpoints_and_gin_files(tmp_path):
    ckpt = tmp_path / "ckpt"
    (ckpt / "train").mkdir(parents=True)
    (ckpt / "config.json").write_text(json.dumps({"d_model": 8}))
    for sweep_dir, how in [(ckpt, "is the checkpoint"), (ckpt / "train", "lies in .*, part of the checkpoint")]:
        cfg = _cfg(tmp_path, sweep_dir=str(sweep_dir), initial_checkpoints={"tiny": str(ckpt)})
        with pytest.raises(output_paths.OutputPathError, match=f"SWEEP_DIR={sweep_dir} {how}"):
            sweep.check_sweep_dir(cfg, ["sweeps/data_size.gin"], ["."])
    # A gin file the sweep reads, where it would write its results.
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "results.md").write_text("include 'sweeps/data_size.gin'\n")
    with pytest.raises(output_paths.OutputPathError, match=r"would write .*results.md, which is gin file results.md"):
        sweep.check_sweep_dir(_cfg(tmp_path), ["results.md"], [str(tmp_path / "sweep")])
    sweep.check_sweep_dir(_cfg(tmp_path), ["sweeps/data_size.gin"], ["."])
    # The binary checks it before anything is written.
    proc = subprocess.run(
        [sys.executable, "-m", "dss_jax.sweep", "--gin_file=sweeps/data_size.gin", f"--gin.SWEEP_DIR='{ckpt}'"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"sweep: error: SWEEP_DIR={ckpt} is the checkpoint {ckpt}: give a path outside it"
    ]
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "train"]


def test_a_runs_evaluation_may_replace_what_an_interrupted_one_left(tmp_path):
    # The sweep evaluates only the steps without a finished result (results.evaluated_steps):
    # a step directory an interrupted evaluation left is replaced, not refused.
    cfg = _cfg(tmp_path)
    evaluate = sweep.run_commands(sweep.plan(cfg)[0], cfg)[1]
    assert evaluate[0] == sweep.EVAL and "OVERWRITE = True" in evaluate[2]
    sweep.check_runs(sweep.plan(cfg), cfg)  # eval's gin files read it


def test_a_decoder_only_grid_runs_through_the_sweep(tmp_path):
    """The sweep with a decoder-only student (models/decoder_only_tiny.gin): DSS and its
    baseline train, validation selects, the test split scores the selected checkpoints,
    and the report's tables are written."""
    (tmp_path / "recipe.gin").write_text(
        RECIPE.replace("sweep_config.sizes = ['tiny']", "sweep_config.sizes = ['decoder_only_tiny']")
        .replace("TRAIN_STEPS = 3", "TRAIN_STEPS = 4', 'EVAL_PERIOD = 2")
        .replace("sweep_config.methods = ['dss']", "sweep_config.methods = ['dss_teacher', 'distill']")
        + "sweep_config.fractions = [1.0]\nsweep_config.selection = 'validation'\nsweep_config.in_process = True\n"
        + "sweep_config.token_budgets = [100000]\nsweep_config.example_budgets = [8]\n"
    )
    (tmp_path / "mini.gin").write_text(
        MINI + "DecoderOnlyConfig.vocab_size = 1024\nmake_train_eval_hook.max_examples = 4\n"
    )
    out = tmp_path / "sweep"
    r = _sweep(tmp_path, out)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["method"] for row in rows] == ["dss_teacher", "distill"]
    for row in rows:
        run_dir = out / "runs" / row["run"]
        assert json.loads((run_dir / "model/config.json").read_text())["family"] == "decoder_only"
        scored = json.loads((run_dir / f"eval/step_{row['selected_step']}/metrics.json").read_text())
        assert float(row["accuracy"]) == scored["accuracy"] and scored["num_examples"] == 12
    assert (out / "results.md").exists() and (out / "budgets.csv").exists()


def test_a_two_point_sweep_writes_both_runs_and_its_results_to_gs(tmp_path, gcs):
    # SWEEP_DIR on gs:// (a GCS emulator, tests/conftest.py); runs in process, the last step.
    (tmp_path / "recipe.gin").write_text(RECIPE + "sweep_config.selection = 'last'\nsweep_config.in_process = True\n")
    (tmp_path / "mini.gin").write_text(MINI)
    out = f"{gcs}/sweep"
    done = _sweep(tmp_path, out)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO(files.path(f"{out}/results.csv").read_text())))
    assert [float(r["fraction"]) for r in rows] == [0.5, 1.0]
    for row in rows:
        run_dir = files.path(f"{out}/runs/{row['run']}")
        metrics = json.loads((run_dir / "eval" / "step_3" / "metrics.json").read_text())
        assert float(row["accuracy"]) == metrics["accuracy"]
        assert (run_dir / "model" / "checkpoint_3").is_dir()
        assert "(in process) dss_jax.train" in (run_dir / "train.log").read_text()
    assert files.path(f"{out}/figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| dss | - | tiny | 0.5 |" in files.path(f"{out}/results.md").read_text()
    assert files.path(f"{out}/code.json").is_file()
    assert not (REPO_ROOT / "gs:").exists()  # nothing written to a local folder named after the scheme
    # Resumable there too: a second call trains and evaluates nothing again (in process,
    # a run that is done appends nothing to its logs).
    logs = {row["run"]: files.path(f"{out}/runs/{row['run']}/train.log").read_text() for row in rows}
    again = _sweep(tmp_path, out, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {run: files.path(f"{out}/runs/{run}/train.log").read_text() for run in logs} == logs
