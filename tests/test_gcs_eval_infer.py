"""eval and infer on gs:// (a GCS emulator, tests/conftest.py): a checkpoint uploaded to a
bucket is evaluated into an EVAL_OUTPUT_DIR there, infer reads its input from and writes
its output to the bucket, and output_paths' refusals hold for URLs as for local paths."""

import json
import pathlib

import _eval_toy as toy
import pytest
from test_output_paths import refusal

from conftest import REPO_ROOT, run_binary
from dss_jax import files, output_paths
from dss_jax.output_paths import Output, OutputPathError, check_outputs


def objects(prefix: str) -> dict[str, bytes]:
    """{path below `prefix`: bytes} of every object under the URL `prefix`."""
    found, todo = {}, [files.path(prefix)]
    while todo:  # epath has no rglob on gs://
        d = todo.pop()
        for p in d.iterdir() if d.is_dir() else ():
            if p.is_dir():
                todo.append(p)
            else:
                found[str(p)[len(prefix) + 1 :]] = p.read_bytes()
    return found


@pytest.fixture
def gs_run(gcs, tmp_path):
    """A training run's MODEL_DIR on gs:// as the trainer lays it out (files only), beside
    a Hugging Face checkpoint and an orbax one."""
    local = tmp_path / "tree"
    run = local / "run"
    (run / "train").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"d_model": 8, "vocab_size": 32}))
    (run / "task.json").write_text(json.dumps({"task": "t", "options": {}}))
    (run / "train" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (run / "checkpoint_5" / "state").mkdir(parents=True)
    (run / "checkpoint_5" / "state" / "_METADATA").write_text("{}")
    (local / "hf").mkdir()
    (local / "hf" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (local / "ckpt" / "params").mkdir(parents=True)
    (local / "ckpt" / "params" / "_METADATA").write_text("{}")
    files.upload_tree(local, gcs)
    return gcs


# ----- output_paths on gs:// (no subprocess) ---------------------------------------------------


def test_gs_outputs_beside_a_run_are_fine_and_the_probe_leaves_nothing(gs_run):
    before = objects(gs_run)
    check_outputs([Output("EVAL_OUTPUT_DIR", f"{gs_run}/run/eval", directory=True, files=["metrics.json"])])
    check_outputs([Output("INFER_OUTPUT", f"{gs_run}/run/eval/answers.jsonl")])
    check_outputs([Output("INFER_OUTPUT", f"{gs_run}/new/deeper/answers.jsonl")])  # no "directory" needed
    check_outputs([Output("--output", f"{gs_run}/hf", directory=True, whole=True)])  # an export, replaced
    assert "is the training run" in refusal([Output("--output", f"{gs_run}/run", directory=True, whole=True)])
    assert objects(gs_run) == before


def test_gs_inputs_outputs_and_earlier_results(gcs):
    source = f"{gcs}/in.jsonl"
    files.path(source).write_text('{"id": "q1", "input": "x"}\n')
    for given in (source, source + "/"):
        message = refusal(
            [Output("INFER_OUTPUT", given)],
            inputs={"INFER_INPUT": source},
            overwrite=True,
            overwrite_setting="--gin.OVERWRITE=True",
        )
        assert message.startswith(f"INFER_OUTPUT={given} is INFER_INPUT ({source}), which this command reads")
    # A local file of the same name is another file.
    check_outputs([Output("INFER_OUTPUT", f"/tmp/{pathlib.Path(gcs).name}/in.jsonl")], inputs={"X": source})
    message = refusal([Output("A", f"{gcs}/o.jsonl"), Output("B", f"{gcs}/o.jsonl")])
    assert message == f"B={gcs}/o.jsonl is also A: each output needs a path of its own"
    # An earlier result: refused without overwrite, as locally.
    out = f"{gcs}/out.jsonl"
    files.path(out).write_text("")
    check_outputs([Output("INFER_OUTPUT", out)])  # empty: no result
    files.path(out).write_text('{"id": "q1", "label": "yes"}\n')
    assert refusal([Output("INFER_OUTPUT", out)], overwrite_setting="--gin.OVERWRITE=True") == (
        f"INFER_OUTPUT={out} already holds a result (29 bytes): pass --gin.OVERWRITE=True to replace it, "
        "or give another path"
    )
    check_outputs([Output("INFER_OUTPUT", out)], overwrite=True)
    files.path(f"{gcs}/eval/step_5/metrics.json").write_text("{}")
    eval_dir = Output(
        "D", f"{gcs}/eval", directory=True, files=["step_5/metrics.json"], results=["step_5/metrics.json"]
    )
    assert f"already holds a result ({gcs}/eval/step_5/metrics.json)" in refusal([eval_dir])
    check_outputs([eval_dir], overwrite=True)


def test_gs_outputs_of_the_wrong_kind_are_refused(gcs):
    files.path(f"{gcs}/a_file").write_text("x")
    files.path(f"{gcs}/d/predictions.jsonl/x").write_text("x")
    assert refusal([Output("INFER_OUTPUT", f"{gcs}/d")]) == f"INFER_OUTPUT={gcs}/d is a directory; give a file path"
    assert refusal([Output("E", f"{gcs}/a_file", directory=True)]).endswith("is a file; give a directory")
    assert refusal([Output("INFER_OUTPUT", f"{gcs}/a_file/out.jsonl")]) == (
        f"INFER_OUTPUT={gcs}/a_file/out.jsonl: {gcs}/a_file is a file, not a directory"
    )
    message = refusal([Output("E", f"{gcs}/d", directory=True, files=["predictions.jsonl"])])
    assert message.endswith(f"{gcs}/d/predictions.jsonl is a directory where a file goes")
    message = refusal([Output("E", gcs, directory=True, files=["a_file/metrics.json"])])
    assert message.endswith(f"{gcs}/a_file is a file where a directory goes")


def test_an_unwritable_gs_output_is_refused_in_one_line(gcs_server):
    out = "gs://no-such-bucket-dss/x/out.jsonl"
    message = refusal([Output("INFER_OUTPUT", out)])
    assert message == f"INFER_OUTPUT={out}: cannot write in gs://no-such-bucket-dss/x (no such bucket)", message


def test_a_forbidden_gs_output_is_refused_in_one_line(gcs, monkeypatch):
    from etils.epath import gpath

    def forbidden(self, data):  # what gcsfs raises on a 403: the reply on a second line
        raise OSError(f"Forbidden: {self}\n{{'message': 'no storage.objects.create permission'}}")

    monkeypatch.setattr(gpath._GPath, "write_bytes", forbidden)
    out = f"{gcs}/out.jsonl"
    message = refusal([Output("INFER_OUTPUT", out)])  # one line
    assert message.startswith(f"INFER_OUTPUT={out}: cannot write in {gcs} (OSError: Forbidden: {gcs}/.dss_write_probe-")
    assert message.endswith(")") and "permission" not in message


def test_the_probe_writes_no_local_directory_named_gs(gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_outputs([Output("INFER_OUTPUT", f"{gcs}/x/out.jsonl")])
    assert not (tmp_path / "gs:").exists() and list(tmp_path.iterdir()) == []
    assert output_paths._same_file(f"{gcs}/x", f"{gcs}/x/") and not output_paths._same_file(f"{gcs}/x", "x")


# ----- eval and infer on gs:// -----------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory, cpu_devices):
    return toy.toy_env(tmp_path_factory, cpu_devices)


@pytest.fixture(scope="module")
def task_gin(env):
    """A gin file and module that register the toy task in a fresh process (its caches
    stay local: what is on gs:// here is the checkpoint and the outputs)."""
    directory = env.root / "subprocess_task"
    directory.mkdir(exist_ok=True)
    toy.write_task_module(env.caches, directory)
    return toy.write_task_gin(directory)


@pytest.fixture(scope="module")
def gs_checkpoints(env, gcs_server):
    """The toy run and its exported params checkpoint, uploaded to gs://."""
    import uuid

    from conftest import GCS_BUCKET

    root = f"gs://{GCS_BUCKET}/ckpt-{uuid.uuid4().hex[:12]}"
    files.upload_tree(env.trained.run_dir, f"{root}/run")
    files.upload_tree(env.params_dir, f"{root}/exported")
    return root


def binary(module, task_gin, *args, check=True):
    import os

    pythonpath = os.pathsep.join([str(task_gin.parent), str(REPO_ROOT)])  # the toy task's module too
    return run_binary(
        module, f"--gin_file=runs/{module.split('.')[-1]}.gin", f"--gin_file={task_gin}", "--gin.BATCH_SIZE=4",
        *args, timeout=300, check=check, PYTHONPATH=pythonpath,
    )  # fmt: skip


def without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("examples_per_second", "checkpoint")}


def test_eval_of_a_gs_run_into_gs_matches_a_local_eval_and_is_not_redone(env, task_gin, gs_checkpoints, gcs, tmp_path):
    from dss_jax.eval import evaluate_checkpoints

    out = f"{gcs}/eval"
    binary("dss_jax.eval", task_gin, f"--gin.CHECKPOINT_PATH='{gs_checkpoints}/run'", f"--gin.EVAL_OUTPUT_DIR='{out}'")
    local = tmp_path / "eval"
    evaluate_checkpoints(
        checkpoint_path=str(env.trained.run_dir),
        output_dir=str(local),
        task_name=toy.TASK,
        feature_lengths=toy.LENGTHS,
        batch_size=4,
    )
    assert not (REPO_ROOT / "gs:").exists()  # no local directory made for the URL (the binary's cwd)
    written = objects(out)
    assert {"config.gin", "metrics.jsonl", "step_60/predictions.jsonl", "step_60/metrics.json"} <= set(written)
    assert any(name.startswith("events.out.tfevents") for name in written)  # TensorBoard scalars
    assert written["step_60/predictions.jsonl"] == (local / "step_60" / "predictions.jsonl").read_bytes()
    metrics = json.loads(written["step_60/metrics.json"])
    assert without_timing(metrics) == without_timing(json.loads((local / "step_60" / "metrics.json").read_text()))
    assert metrics["checkpoint"] == f"{gs_checkpoints}/run/checkpoint_60" and metrics["num_examples"] == 11
    logged = [json.loads(line) for line in written["metrics.jsonl"].decode().splitlines()]
    assert [r["step"] for r in logged] == [60] and logged[0]["test/accuracy"] == metrics["accuracy"]
    # Again into the same output: refused in one line before decoding, the outputs kept.
    again = binary(
        "dss_jax.eval",
        task_gin,
        f"--gin.CHECKPOINT_PATH='{gs_checkpoints}/run'",
        f"--gin.EVAL_OUTPUT_DIR='{out}'",
        check=False,
    )
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"eval: error: EVAL_OUTPUT_DIR={out} already holds a result ({out}/step_60/predictions.jsonl): "
        "pass --gin.OVERWRITE=True to replace it, or give another path"
    ], again.stderr[-3000:]
    assert objects(out) == written
    # With overwrite: the step's outputs replaced whole, one metrics record for the step.
    evaluate_checkpoints(
        checkpoint_path=f"{gs_checkpoints}/run",
        output_dir=out,
        task_name=toy.TASK,
        feature_lengths=toy.LENGTHS,
        batch_size=4,
        max_examples=3,
        overwrite=True,
    )
    replaced = objects(out)
    assert len(replaced["step_60/predictions.jsonl"].decode().splitlines()) == 3
    assert json.loads(replaced["step_60/metrics.json"])["num_examples"] == 3
    logged = [json.loads(line) for line in replaced["metrics.jsonl"].decode().splitlines()]
    assert [(r["step"], r["test/num_examples"]) for r in logged] == [(60, 3)]


def test_eval_into_a_gs_checkpoint_is_refused_before_decoding(env, gs_checkpoints, monkeypatch):
    from dss_jax import checkpoints
    from dss_jax.eval import evaluate_checkpoints

    monkeypatch.setattr(checkpoints, "load_checkpoint", lambda *a, **k: pytest.fail("loaded before the check"))
    before = objects(gs_checkpoints)
    settings = dict(task_name=toy.TASK, feature_lengths=toy.LENGTHS, batch_size=4)
    for out, expect in [
        (f"{gs_checkpoints}/run", f"is the training run {gs_checkpoints}/run"),
        (
            f"{gs_checkpoints}/run/checkpoint_60/eval",
            f"lies in the orbax checkpoint {gs_checkpoints}/run/checkpoint_60",
        ),
        (f"{gs_checkpoints}/exported", f"is the checkpoint {gs_checkpoints}/exported"),
    ]:
        with pytest.raises(OutputPathError) as e:
            evaluate_checkpoints(checkpoint_path=f"{gs_checkpoints}/run", output_dir=out, overwrite=True, **settings)
        assert str(e.value).startswith(f"EVAL_OUTPUT_DIR={out} {expect}"), str(e.value)
    assert objects(gs_checkpoints) == before


def test_infer_reads_and_writes_gs(env, task_gin, gs_checkpoints, gcs, tmp_path, monkeypatch):
    from dss_jax import infer

    records = [{"id": "q1", "input": "what about a red cup?"}, {"id": "q2", "input": "what about a blue hat?"}]
    text = "".join(json.dumps(r) + "\n" for r in records)
    source, out = f"{gcs}/in.jsonl", f"{gcs}/answers/out.jsonl"
    files.path(source).write_text(text)
    proc = binary(
        "dss_jax.infer",
        task_gin,
        f"--gin.CHECKPOINT_PATH='{gs_checkpoints}/exported'",
        f"--gin.INFER_INPUT='{source}'",
        f"--gin.INFER_OUTPUT='{out}'",
    )
    assert "2 predictions written" in proc.stdout
    assert not (REPO_ROOT / "gs:").exists()  # no local directory made for the URL (the binary's cwd)
    (tmp_path / "in.jsonl").write_text(text)
    local = infer.infer_file(
        checkpoint_path=str(env.params_dir),
        input_path=str(tmp_path / "in.jsonl"),
        output_path=str(tmp_path / "out.jsonl"),
        feature_lengths=toy.LENGTHS,
        task_name=toy.TASK,
        batch_size=4,
    )
    assert files.path(out).read_bytes() == (tmp_path / "out.jsonl").read_bytes()
    assert [r["id"] for r in local] == ["q1", "q2"]
    # Its input, a file of the gs:// checkpoint, an earlier output: refused before loading.
    monkeypatch.setattr(infer.checkpoints, "load_checkpoint", lambda *a, **k: pytest.fail("loaded before the check"))
    before = objects(gcs), objects(gs_checkpoints)
    for output, overwrite, expect in [
        (source, True, f"INFER_OUTPUT={source} is INFER_INPUT ({source}), which this command reads"),
        (
            f"{gs_checkpoints}/exported/answers.jsonl",
            True,
            f"INFER_OUTPUT={gs_checkpoints}/exported/answers.jsonl would be a file of the checkpoint "
            f"{gs_checkpoints}/exported",
        ),
        (
            f"{gs_checkpoints}/run/config.json",
            True,
            f"INFER_OUTPUT={gs_checkpoints}/run/config.json would be a file of the training run {gs_checkpoints}/run",
        ),
        (out, False, f"INFER_OUTPUT={out} already holds a result ("),
    ]:
        with pytest.raises(OutputPathError) as e:
            infer.infer_file(
                checkpoint_path=f"{gs_checkpoints}/exported",
                input_path=source,
                output_path=output,
                feature_lengths=toy.LENGTHS,
                overwrite=overwrite,
            )
        assert str(e.value).startswith(expect), str(e.value)
    assert (objects(gcs), objects(gs_checkpoints)) == before


def test_a_staged_output_dir_on_gs_is_uploaded_whole_and_replaced_only_as_told(gcs):
    from dss_jax.checkpoints import OutputDirError, staged_output_dir

    target = f"{gcs}/export"
    settings = dict(replaceable=["config.json", "params", "*.model"], what="a params checkpoint")
    with staged_output_dir(target, overwrite=False, **settings) as staging:
        assert not files.is_remote(staging)  # written locally, uploaded when complete
        (staging / "config.json").write_text("{}")
        (staging / "params").mkdir()
        (staging / "params" / "old_shard").write_text("1")
        (staging / "spiece.model").write_text("v")
    assert objects(target) == {"config.json": b"{}", "params/old_shard": b"1", "spiece.model": b"v"}
    with pytest.raises(OutputDirError, match=f"{target} is not empty"):
        with staged_output_dir(target, overwrite=False, **settings):
            pytest.fail("a refused output is not staged")
    with pytest.raises(RuntimeError):  # a failed write leaves the old output as it was
        with staged_output_dir(target, overwrite=True, **settings) as staging:
            (staging / "config.json").write_text('{"new": 1}')
            raise RuntimeError("interrupted")
    assert objects(target)["config.json"] == b"{}"
    with staged_output_dir(target, overwrite=True, **settings) as staging:
        (staging / "config.json").write_text('{"new": 1}')
        (staging / "params").mkdir()
        (staging / "params" / "new_shard").write_text("2")
    assert objects(target) == {"config.json": b'{"new": 1}', "params/new_shard": b"2"}  # the old ones removed
    files.path(f"{gcs}/run/checkpoint_5/x").write_text("x")
    with pytest.raises(OutputDirError, match="holds a training run's checkpoint_5/"):
        with staged_output_dir(f"{gcs}/run", overwrite=True, **settings):
            pass
