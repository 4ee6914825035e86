"""The gin command line shared by the binaries: shorthand, search path, and one-line errors
for every mistake a user can make in a gin file or binding, before any work."""

import glob
import importlib
import logging
import os
import re
import shlex
import subprocess
import sys

import pytest

import gin
from conftest import REPO_ROOT, T5X_DATA
from dss_jax import cli, gin_utils

TRAIN_FILES = ["runs/train.gin", "models/tiny.gin", "tasks/synthetic.gin"]


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _import_binary(name):
    """A binary's module, with the configurables its main registers before parsing. absl's
    flags are global: a flag a bench script imported earlier in this process defined
    (test_bench_train: train_throughput's --seed) is dropped for the binary's own."""
    from absl import flags

    for _ in range(100):
        try:
            module = importlib.import_module(f"dss_jax.{name}")
            break
        except flags.DuplicateFlagError as e:
            delattr(flags.FLAGS, re.search(r"The flag '([^']+)'", str(e)).group(1))
    if name in ("eval", "infer"):  # what their main registers before it parses
        from dss_jax import configurables

        configurables.register_for_decoding()
    return module


@pytest.fixture(scope="module")
def binaries():
    """The binaries' modules: they register the configurables their gin files bind."""
    return {name: _import_binary(name) for name in ("train", "eval", "infer", "sweep", "annotate")}


def parse_train(bindings, files=TRAIN_FILES):
    from dss_jax import train

    gin_utils.parse_gin(files, ["MODEL_DIR = '/tmp/unused'", *bindings], [], train.REQUIRED_MACROS)


def test_shorthand_becomes_a_binding():
    assert gin_utils.rewrite_gin_args(["prog", "--gin.TRAIN_STEPS=5", "--x=1"]) == [
        "prog",
        "--gin_bindings=TRAIN_STEPS = 5",
        "--x=1",
    ]
    with pytest.raises(SystemExit, match="needs a value"):
        gin_utils.rewrite_gin_args(["prog", "--gin.TRAIN_STEPS"])


def test_includes_found_on_the_search_path_log_no_errors(caplog):
    # gin probes every search folder and logs "Path not found" as an ERROR for each miss;
    # a user reading the quickstart's output must not see errors for a config that parses.
    from dss_jax import configurables  # noqa: F401  (model_config in quickstart.gin)

    with caplog.at_level(logging.INFO):
        gin_utils.parse_gin(["quickstart.gin"], [], ["."])
    assert gin.query_parameter("TRAIN_STEPS/macro.value") > 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_missing_include_names_the_file(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("include 'nope/missing.gin'\n")
    with pytest.raises(gin_utils.GinConfigError, match=r"bad.gin:1: .*nope/missing.gin.*--gin_search_paths"):
        gin_utils.parse_gin([str(bad)], [], [str(tmp_path)])


def test_unset_macro_is_named_with_its_flag(tmp_path):
    cfg = tmp_path / "run.gin"
    cfg.write_text("import dss_jax.losses\nLossConfig.rationale_weight = %WEIGHT\n")
    with pytest.raises(gin_utils.GinConfigError, match=r"WEIGHT.*--gin\.WEIGHT="):
        gin_utils.parse_gin([str(cfg)], [], [])


# --- misspelt names -----------------------------------------------------------------


@pytest.mark.parametrize(
    "binding,meant",
    [
        ("TRAIN_STEP = 5", "TRAIN_STEPS"),  # issue #17: this ran 10,000 steps at batch 64
        ("train_steps = 5", "TRAIN_STEPS"),  # any case: a parameter's name given as a macro
        ("BATCHSIZE = 8", "BATCH_SIZE"),
    ],
)
def test_command_line_macro_nothing_reads_is_an_error_naming_the_nearest(binding, meant):
    name = binding.split()[0]
    with pytest.raises(
        gin_utils.GinConfigError,
        match=rf"macro {name} is set on the command line "
        rf".*nothing in this config reads it; did you mean {meant}( or \w+)*\?",
    ):
        parse_train([binding])


def test_command_line_macro_without_a_near_name_lists_the_macros_read():
    with pytest.raises(gin_utils.GinConfigError, match=r"macro ZZZ .*; this config reads .*TRAIN_STEPS"):
        parse_train(["ZZZ = 1"])


def test_a_macro_read_through_another_macro_is_read(tmp_path):
    cfg = tmp_path / "run.gin"
    cfg.write_text("import dss_jax.losses\nLossConfig.rationale_weight = %WEIGHT\n")
    gin_utils.parse_gin([str(cfg)], ["WEIGHT = %BASE", "BASE = 0.5"], [])
    assert gin.query_parameter("WEIGHT/macro.value") is not None
    # ... but one that only an unread macro refers to is not read.
    gin.clear_config()
    with pytest.raises(gin_utils.GinConfigError, match=r"macro UNUSED .*; macro BASE "):
        gin_utils.parse_gin([str(cfg)], ["WEIGHT = 1.0", "UNUSED = %BASE", "BASE = 0.5"], [])


def test_command_line_override_of_a_file_macro_nothing_reads_is_an_error():
    # partitioning/tp.gin sets NUM_PARTITIONS; without that file nothing reads it, so
    # --gin.NUM_PARTITIONS=8 alone would silently train data-parallel.
    with pytest.raises(gin_utils.GinConfigError, match="macro NUM_PARTITIONS is set on the command line"):
        parse_train(["NUM_PARTITIONS = 8"])
    gin.clear_config()
    parse_train(["NUM_PARTITIONS = 8"], TRAIN_FILES + ["partitioning/tp.gin"])


def test_file_macro_nothing_reads_is_allowed_and_logged(tmp_path, caplog):
    # A task file serves train and annotate; annotate reads none of its macros.
    gin_utils.parse_gin(["tasks/synthetic.gin"], [], [])
    # A user's file with a near-miss is allowed (it may be shared) but warned about.
    mine = tmp_path / "mine.gin"
    mine.write_text("# my run\nTRAIN_STEP = 5\n")
    gin.clear_config()
    with caplog.at_level(logging.INFO):
        parse_train([], TRAIN_FILES + [str(mine)])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "mine.gin:2: macro TRAIN_STEP is set but nothing in this config reads it; did you mean TRAIN_STEPS?" in w
        for w in warnings
    ), caplog.text


def test_unset_macro_points_at_a_misspelt_one_set_in_a_file(tmp_path):
    cfg = tmp_path / "run.gin"
    cfg.write_text("import dss_jax.losses\nLossConfig.rationale_weight = %WEIGHT\nWIEGHT = 1.0\n")
    with pytest.raises(gin_utils.GinConfigError, match=r"WEIGHT not set; .*run.gin:3 sets WIEGHT: misspelt\?"):
        gin_utils.parse_gin([str(cfg)], [], [])


def test_unknown_configurable_or_parameter_names_the_nearest(tmp_path):
    with pytest.raises(
        gin_utils.GinConfigError, match=r"gin binding 'OptimizerConfig.learnin_rate = 1': .*did you mean learning_rate"
    ):
        parse_train(["OptimizerConfig.learnin_rate = 1"])
    gin.clear_config()
    with pytest.raises(gin_utils.GinConfigError, match=r"'LosConfig.z_loss = 0.1': .*did you mean LossConfig"):
        parse_train(["LosConfig.z_loss = 0.1"])
    inner = tmp_path / "inner.gin"
    inner.write_text("import dss_jax.losses\nLossConfig.rationale_wieght = 1.0\n")
    outer = tmp_path / "outer.gin"
    outer.write_text(f"include '{inner}'\n")
    gin.clear_config()
    with pytest.raises(
        gin_utils.GinConfigError,
        match=r"inner.gin:2: .*'rationale_wieght'; did you mean "
        r"rationale_weight\?$",
    ):
        gin_utils.parse_gin([str(outer)], [], [])


# --- syntax errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    "binding,fix",
    [
        ("MODEL_DIR = /tmp/x", "strings need quotes: --gin.MODEL_DIR=\"'/tmp/x'\""),
        ("MODEL_DIR = '/tmp/x", "strings need quotes: --gin.MODEL_DIR=\"'/tmp/x'\""),  # a quote the shell ate
        ("LABEL_SOURCE = teacher", "--gin.LABEL_SOURCE=\"'teacher'\" (or %teacher for a macro)"),
        ("TASK_FEATURE_LENGTHS = {'a': 1", "a bracket or quote that opens is never closed"),
        ("TASK_FEATURE_LENGTHS = {'a': 1]", "check its brackets"),
    ],
)
def test_binding_syntax_error_is_one_line_with_the_fix(binding, fix, capsys):
    with pytest.raises(SystemExit) as e:
        cli.guard(lambda: parse_train([binding]), "train")()
    assert e.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"train: error: gin binding {binding!r}: "), err
    assert fix in err


def test_file_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("import dss_jax.losses\n\nLossConfig.z_loss = 0.0\nMODEL_DIR = /tmp/x\n")
    top = tmp_path / "top.gin"
    top.write_text(f"include '{bad}'\n")
    with pytest.raises(
        gin_utils.GinConfigError, match=r"bad.gin:4: 'MODEL_DIR = /tmp/x': .*strings need quotes: MODEL_DIR = '/tmp/x'$"
    ):
        gin_utils.parse_gin([str(top)], [], [])


def test_an_include_cycle_names_the_include_that_closes_it(tmp_path):
    # Gin recursed until Python's stack ran out: a RecursionError traceback.
    (tmp_path / "self.gin").write_text("X = 1\ninclude 'self.gin'\n")
    (tmp_path / "a.gin").write_text("include 'b.gin'\n")
    (tmp_path / "b.gin").write_text("Y = 2\ninclude 'a.gin'\n")
    (tmp_path / "twice.gin").write_text("include 'c.gin'\ninclude 'c.gin'\n")  # not a cycle
    (tmp_path / "c.gin").write_text("Z = 3\n")
    with pytest.raises(
        gin_utils.GinConfigError, match=r"self.gin:2: include .self.gin. leads back .*self.gin -> .*self.gin\)"
    ):
        gin_utils.parse_gin(["self.gin"], [], [str(tmp_path)])
    with pytest.raises(gin_utils.GinConfigError) as e:
        gin_utils.parse_gin([str(tmp_path / "a.gin")], [], [str(tmp_path)])
    assert str(e.value).startswith(f"{tmp_path / 'b.gin'}:2: include 'a.gin' leads back to a file it is read from (")
    assert "a.gin -> " in str(e.value) and "b.gin -> " in str(e.value) and "\n" not in str(e.value)
    gin_utils.parse_gin([str(tmp_path / "twice.gin")], [], [str(tmp_path)])


def test_bindings_without_a_file_are_checked_too():
    # annotate takes bindings alone (require_files=False).
    with pytest.raises(gin_utils.GinConfigError, match="macro FOO is set on the command line"):
        gin_utils.parse_gin([], ["FOO = 1"], [], require_files=False)
    with pytest.raises(gin_utils.GinConfigError, match="no --gin_file given"):
        gin_utils.parse_gin([], [], [])


# --- nothing shipped trips the checks -----------------------------------------------

DOCS = ["README.md", "gin/README.md", "docs/*.md", "launch/README.md", "gin/**/*.gin"]
T5X_CHECKOUT = "/path/to/t5x"  # where docs/t5x.md's commands find T5X's gin files
COMMAND = re.compile(
    r"(?:-m dss_jax\.(train|eval|infer|sweep|annotate)\b|slurm_gpu\.sbatch()|tpu_pod\.sh \S+ (train) --)"
    r"([^`\n]*)"
)


def documented_commands():
    """(where, binary, gin files, gin bindings) of every command the docs and gin files show."""
    for pattern in DOCS:
        for path in sorted(glob.glob(os.path.join(REPO_ROOT, pattern), recursive=True)):
            text = open(path).read()
            if path.endswith(".gin"):  # commands are in the comments
                text = "\n".join(
                    line.split("#", 1)[1] if line.lstrip().startswith("#") else "" for line in text.splitlines()
                )
            for lineno, line in _logical_lines(text):
                for m in COMMAND.finditer(line):
                    binary = m.group(1) or m.group(3) or "train"
                    args = gin_utils.rewrite_gin_args(shlex.split(m.group(4), comments=True))
                    files = [a.split("=", 1)[1] for a in args if a.startswith("--gin_file=")]
                    if f"--gin_search_paths={T5X_CHECKOUT}" in args:  # docs/t5x.md: T5X's files, here its test data
                        files = [str(T5X_DATA / "gin" / f) if f.startswith("t5x/") else f for f in files]
                    bindings = [a.split("=", 1)[1] for a in args if a.startswith("--gin_bindings=")]
                    if files or bindings:
                        yield f"{os.path.relpath(path, REPO_ROOT)}:{lineno}", binary, files, bindings


def _logical_lines(text):
    """(first line number, line) with shell continuations (a trailing backslash) joined."""
    start, joined = None, ""
    for lineno, line in enumerate(text.splitlines(), 1):
        start = start or lineno
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        yield start, joined + line
        start, joined = None, ""


_TRAIN = ["runs/train.gin", "models/base.gin", "tasks/cqa.gin"]
_DIR = "MODEL_DIR = '/tmp/run'"
_KNOBS = [  # gin/README.md, "Other knobs" and "Training on a CPU"
    "train.checkpoint_period = 100",
    "train.keep_checkpoints = 2",
    "train.log_period = 10",
    "train.num_microbatches = 32",
    "train.seed = 1",
    "train.dropout_rng = 'xla_threefry'",
    "LossConfig.normalization = 'sequence'",
    "LossConfig.z_loss = 1e-4",
    "LossConfig.label_smoothing = 0.1",
    "OptimizerConfig.learning_rate = 1e-3",
    "OptimizerConfig.schedule = 'rsqrt'",
    "OptimizerConfig.warmup_steps = 10",
    "OptimizerConfig.clip_grad_norm = 1.0",
    "OptimizerConfig.weight_decay = 0.0",
    "T5Config.dtype = 'bfloat16'",
    "T5Config.remat_policy = 'full'",
    "T5Config.dropout_rate = 0.1",
    "task_options.train_fraction = 0.5",
    "task_options.seed = 1",
    "task_options.teacher_sample = 0",
    "DssFeatureConverter.pack_encoder_length = 512",
    "DssFeatureConverter.pack_decoder_length = 128",
    "train_batches.num_input_shards = 1",
]
TABLE = (  # gin/README.md's table: every file of each column, and the paper's baselines
    [
        (
            f"gin/README.md table models/{os.path.basename(p)}",
            "train",
            _TRAIN[:1] + [f"models/{os.path.basename(p)}"] + _TRAIN[2:],
            [_DIR],
        )
        for p in sorted(glob.glob(os.path.join(REPO_ROOT, "gin/models/*.gin")))
    ]
    + [
        (
            f"gin/README.md table tasks/{os.path.basename(p)}",
            "train",
            _TRAIN[:2] + [f"tasks/{os.path.basename(p)}"],
            [_DIR],
        )
        for p in sorted(glob.glob(os.path.join(REPO_ROOT, "gin/tasks/*.gin")))
    ]
    + [
        (f"gin/README.md table {d}/{os.path.basename(p)}", "train", _TRAIN + [f"{d}/{os.path.basename(p)}"], [_DIR])
        for d in ("partitioning", "optimizers")
        for p in sorted(glob.glob(os.path.join(REPO_ROOT, f"gin/{d}/*.gin")))
    ]
    + [
        (f"gin/README.md baseline {s}", "train", _TRAIN, [_DIR, "RATIONALE_WEIGHT = 0.0", f"LABEL_SOURCE = '{s}'"])
        for s in ("gt", "teacher")
    ]
    + [("gin/README.md knobs", "train", _TRAIN, [_DIR, *_KNOBS])]
    + [("gin/README.md tp", "train", _TRAIN + ["partitioning/tp.gin"], [_DIR, "NUM_PARTITIONS = 4"])]
    + [
        (f"gin/sweeps/{os.path.basename(p)}", "sweep", [f"sweeps/{os.path.basename(p)}"], ["SWEEP_DIR = '/tmp/s'"])
        for p in sorted(glob.glob(os.path.join(REPO_ROOT, "gin/sweeps/*.gin")))
    ]
    + [
        ("dss_jax/quickstart.py train", "train", ["quickstart.gin"], ["MODEL_DIR = '/tmp/q'", "TRAIN_STEPS = 8"]),
        (
            "dss_jax/quickstart.py eval",
            "eval",
            ["runs/eval.gin", "quickstart.gin"],
            ["CHECKPOINT_PATH = '/tmp/q'", "EVAL_OUTPUT_DIR = '/tmp/q/eval'", "SPLIT = 'test'"],
        ),
    ]
    + [
        (
            "docs/bootstrap.md paths",
            "train",
            ["recipes/bootstrap_round2.gin"],
            ["MODEL_DIR = '/tmp/r2'", "ROUND1_MODEL_DIR = '/tmp/r1'", "STUDENT_CACHE = '/tmp/c.jsonl'"],
        )
    ]
)


def test_the_docs_show_commands():
    wheres = [where.split(":")[0] for where, *_ in documented_commands()]
    for doc in ("README.md", "gin/README.md", "docs/bootstrap.md", "gin/runs/eval.gin"):
        assert doc in wheres, doc
    assert len(wheres) >= 15


@pytest.mark.parametrize(
    "where,binary,files,bindings", [pytest.param(*c, id=f"{c[0]} {c[1]}") for c in list(documented_commands()) + TABLE]
)
def test_every_documented_combination_parses(where, binary, files, bindings, binaries, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # gin files are found from anywhere
    module = binaries[binary]
    gin_utils.parse_gin(
        files, bindings, ["."], getattr(module, "REQUIRED_MACROS", ()), require_files=binary != "annotate"
    )
    if binary == "sweep":  # and every run it would start, as its train and eval binaries parse them
        cfg = module.sweep_config()
        module.check_methods(cfg)
        module.check_runs(module.plan(cfg), cfg)


# --- the binaries ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "binary,args,typo,meant",
    [
        (
            "train",
            [
                "--gin_file=runs/train.gin",
                "--gin_file=models/tiny.gin",
                "--gin_file=tasks/synthetic.gin",
                "--gin.MODEL_DIR='{out}'",
            ],
            "--gin.TRAIN_STEP=5",
            "TRAIN_STEPS",
        ),
        (
            "eval",
            [
                "--gin_file=runs/eval.gin",
                "--gin_file=tasks/synthetic.gin",
                "--gin.CHECKPOINT_PATH='/nonexistent'",
                "--gin.EVAL_OUTPUT_DIR='{out}'",
            ],
            "--gin.SPLT='test'",
            "SPLIT",
        ),
        (
            "infer",
            [
                "--gin_file=runs/infer.gin",
                "--gin_file=tasks/synthetic.gin",
                "--gin.CHECKPOINT_PATH='/nonexistent'",
                "--gin.INFER_INPUT='/nonexistent.jsonl'",
                "--gin.INFER_OUTPUT='{out}'",
            ],
            "--gin.BATCHSIZE=4",
            "BATCH_SIZE",
        ),
        (
            "sweep",
            ["--gin_file=sweeps/data_size.gin", "--gin.SWEEP_DIR='{out}'"],
            "--gin.sweep_config.train_bindings=['TRAIN_STEP = 3']",
            "TRAIN_STEPS",
        ),  # caught before the first run
        ("annotate", ["--input=/nonexistent.jsonl", "--output={out}", "--model=m"], "--gin.TRAIN_STEPS=3", None),
    ],
)
def test_binaries_stop_on_a_misspelt_macro_before_any_work(binary, args, typo, meant, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", f"dss_jax.{binary}", *[a.format(out=out) for a in args], typo]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == cli.EXIT_USAGE, proc.stderr
    assert lines[-1].startswith(f"{binary}: error: ") and "nothing in this config reads it" in lines[-1], proc.stderr
    assert meant is None or f"did you mean {meant}?" in lines[-1]
    assert "Traceback" not in proc.stderr
    assert not out.exists()
