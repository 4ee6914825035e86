"""The student as a local teacher (`annotate --backend=student`): its samples are what
`dss_jax.infer` decodes, batching and concurrency do not change them, sampling gives n
samples, and the binary resumes after a SIGKILL."""

import functools
import json
import signal
import subprocess
import sys
import time

import _eval_toy as toy
import numpy as np
import pytest

from conftest import REPO_ROOT
from dss_jax import infer, prediction
from dss_jax.data import parsers
from dss_jax.data.cache import CacheWriter, read_cache
from dss_jax.data.options import split_single_task
from dss_jax.data.paired import LABEL_PREFIX, RATIONALE_PREFIX
from dss_jax.teacher.examples import read_examples
from dss_jax.teacher.pipeline import AnnotateConfig, run_annotation
from dss_jax.teacher.student_backend import STUDENT_TEMPLATE, StudentBackend, StudentConfig, StudentLoadError

LENGTHS = {"label_inputs": 24, "label_targets": 6, "rationale_inputs": 24, "rationale_targets": 12}
LONG = "what about a red apple? " + "and a very long story about a blue car " * 6


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A random tiny T5 checkpoint with a SentencePiece vocabulary beside it, and inputs."""
    import jax

    from dss_jax.checkpoints import save_params
    from dss_jax.model.config import T5Config
    from dss_jax.model.t5 import init_variables

    root = tmp_path_factory.mktemp("student")
    caches = toy.write_caches(root / "caches")
    spm = toy.train_vocab(caches, root)
    config = T5Config.preset("tiny", "t5.1.1", vocab_size=toy.MODEL_VOCAB, dropout_rate=0.0)
    import flax.linen as nn

    params = jax.tree_util.tree_map(np.array, nn.meta.unbox(init_variables(config, jax.random.key(3))["params"]))
    # Make EOS likely enough that some decodes stop and others run to their length.
    params["decoder"]["logits_dense"]["kernel"][:, 1] += 0.5 * np.abs(params["decoder"]["logits_dense"]["kernel"]).max()
    ckpt = save_params(root / "ckpt", params, config, vocab_path=spm)
    records = read_cache(caches["test"]) + read_cache(caches["train"])[:9]
    inputs = root / "inputs.jsonl"
    lines = [{"id": r.id, "input": r.input, "label": r.label} for r in records] + [{"id": "long", "input": LONG}]
    inputs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return {"ckpt": ckpt, "inputs": inputs, "root": root}


def backend_for(student, **overrides):
    settings = dict(
        checkpoint=str(student["ckpt"]),
        family="cqa",
        batch_size=4,
        input_length=LENGTHS["label_inputs"],
        label_length=LENGTHS["label_targets"],
        batch_wait=0.05,
    )
    settings.update(overrides)
    return StudentBackend(StudentConfig(**settings))


def annotate(backend, examples, cache, *, concurrency=1, num_samples=1, temperature=0.0, keep="all"):
    config = AnnotateConfig(
        template=STUDENT_TEMPLATE,
        teacher=backend.name,
        num_samples=num_samples,
        temperature=temperature,
        max_tokens=LENGTHS["rationale_targets"],
        concurrency=concurrency,
        keep=keep,
        progress=False,
    )
    with CacheWriter(cache) as writer:
        return run_annotation(
            examples,
            backend,
            writer,
            config,
            parse=functools.partial(parsers.parse_completion, "cqa"),
            labels_match=functools.partial(parsers.labels_match, "cqa"),
        )


def by_id(path):
    return {r.id: r.to_json() for r in read_cache(path)}  # read_cache refuses duplicate ids


def test_greedy_samples_are_the_infer_binary_outputs_whatever_the_concurrency(student, tmp_path, caplog):
    examples = read_examples(student["inputs"], STUDENT_TEMPLATE)
    rows = infer.infer_file(
        checkpoint_path=str(student["ckpt"]),
        input_path=str(student["inputs"]),
        output_path=str(tmp_path / "infer.jsonl"),
        feature_lengths=LENGTHS,
        family="cqa",
        batch_size=4,
        output_rationale=True,
    )
    expected = {r["id"]: (r["rationale"], r["label"]) for r in rows}

    with backend_for(student) as backend:
        with caplog.at_level("WARNING"):
            assert backend.check_inputs(examples) == 1
        assert any(f"{student['inputs']}:21 (id 'long'): input too long" in m for m in caplog.messages)
        summary = annotate(backend, examples, tmp_path / "c8.jsonl", concurrency=8)
        batches = backend.batches
    records = by_id(tmp_path / "c8.jsonl")
    assert summary.written == len(examples) == len(records) == 21 and summary.complete
    got = {}
    for example in examples:
        (sample,) = records[example.id]["samples"]
        got[example.id] = (sample["rationale"], sample["label"] or "")
        assert sample["teacher"] == f"student:{student['ckpt']}" and sample["prompt_id"] == "student"
        assert (
            sample["completion"] == f"{sample['rationale'].strip()} So the answer is: {sample['label'] or ''}".strip()
        )
        assert records[example.id]["label"] == example.label
    assert got == expected
    # Some decodes stopped at EOS, some ran to their length; both are recorded.
    reasons = [r["samples"][0]["meta"]["finish_reason"] for r in records.values()]
    assert set(reasons) == {"stop", "length"}
    assert batches < len(examples)  # concurrent prompts shared decode batches

    # Usage: one request per prompt, tokens counted from the real encoder rows.
    with backend_for(student) as backend:
        vocabulary = backend.vocabulary
        annotate(backend, examples, tmp_path / "c1.jsonl", concurrency=1)
        usage = backend.usage
    assert by_id(tmp_path / "c1.jsonl") == records
    assert usage.requests == len(examples)
    real = sum(
        np.count_nonzero(prediction.encode_input(vocabulary, prefix + e.input, 24, False)[0])
        for e in examples
        for prefix in (LABEL_PREFIX, RATIONALE_PREFIX)
    )
    assert usage.prompt_tokens == real
    assert 2 * len(examples) <= usage.completion_tokens <= len(examples) * (6 + 12)
    assert usage.completion_tokens < len(examples) * (6 + 12)  # EOS ends some early


def test_sampling_gives_n_samples_reproducibly(student, tmp_path):
    examples = read_examples(student["inputs"], STUDENT_TEMPLATE)[:6]
    caches = []
    for run in range(2):
        # 5 samples per prompt with 4-row batches: a prompt's rows span two batches.
        with backend_for(student, seed=7) as backend:
            summary = annotate(backend, examples, tmp_path / f"s{run}.jsonl", num_samples=5, temperature=1.0)
        assert summary.samples == 30
        caches.append(by_id(tmp_path / f"s{run}.jsonl"))
    assert caches[0] == caches[1]  # one prompt at a time: the same batches, the same keys
    assert all(len(r["samples"]) == 5 for r in caches[0].values())
    distinct = {(s["rationale"], s["label"]) for r in caches[0].values() for s in r["samples"]}
    assert len(distinct) > 6  # not one answer per prompt: it sampled
    with backend_for(student, seed=8) as backend:
        annotate(backend, examples, tmp_path / "other_seed.jsonl", num_samples=5, temperature=1.0)
    assert by_id(tmp_path / "other_seed.jsonl") != caches[0]


def test_single_task_student_output_is_split(student):
    """A single-task student's `predict:` text holds both parts; the backend splits it."""
    from dss_jax.checkpoints import load_checkpoint, select_checkpoints
    from dss_jax.model.decoding import DecodeConfig
    from dss_jax.prediction import decode_batches, tokens_to_texts

    text = "what about a red cup?"
    with backend_for(student, target="single_task") as backend:
        (completion,) = backend.complete(text, 1, 0.0, max_tokens=12)
        row, _ = backend.encode(LABEL_PREFIX + text)
    ((_, path),) = select_checkpoints(str(student["ckpt"]))
    model, params, _ = load_checkpoint(path)
    tokens = decode_batches(model, params, row[None], DecodeConfig(max_decode_length=6 + 12), batch_size=4)
    (decoded,) = tokens_to_texts(backend.vocabulary, tokens, model)
    assert completion.text == decoded
    rationale, label = split_single_task(decoded)
    assert (completion.rationale, completion.label) == (rationale, label or None)


def test_nli_inputs_put_eos_between_premise_and_hypothesis(student):
    with backend_for(student, family="anli1") as nli, backend_for(student, family="cqa") as plain:
        text = "a red cup</s>a blue hat"
        row, _ = nli.encode(LABEL_PREFIX + text)
        expected, _ = prediction.encode_input(nli.vocabulary, LABEL_PREFIX + text, 24, separator=True)
        assert row.tolist() == expected.tolist()
        real = row[row != 0]
        assert (real == 1).sum() == 2 and real[-1] == 1  # one EOS inside, one at the end
        assert (plain.encode(LABEL_PREFIX + text)[0] == 1).sum() == 1


def test_load_errors_name_the_path(student, tmp_path):
    with pytest.raises(StudentLoadError, match=f"{tmp_path / 'nope'}"):
        StudentBackend(StudentConfig(checkpoint=str(tmp_path / "nope")))
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(student["ckpt"], bare)
    (bare / "spiece.model").unlink()
    with pytest.raises(StudentLoadError, match=rf"{bare} has no spiece.model"):
        StudentBackend(StudentConfig(checkpoint=str(bare)))


def annotate_cmd(student, output, *extra):
    return [
        sys.executable,
        "-m",
        "dss_jax.annotate",
        "--backend=student",
        f"--checkpoint={student['ckpt']}",
        f"--input={student['inputs']}",
        f"--output={output}",
        "--dataset_family=cqa",
        "--noprogress",
        f"--student_input_length={LENGTHS['label_inputs']}",
        f"--student_label_length={LENGTHS['label_targets']}",
        f"--max_tokens={LENGTHS['rationale_targets']}",
        "--student_batch_size=4",
        *extra,
    ]


def test_binary_sigkill_then_restart_gives_the_in_process_cache(student, tmp_path):
    examples = read_examples(student["inputs"], STUDENT_TEMPLATE)
    with backend_for(student) as backend:
        annotate(backend, examples, tmp_path / "reference.jsonl", concurrency=4)
    expected = by_id(tmp_path / "reference.jsonl")

    killed = tmp_path / "killed.jsonl"
    # One prompt in flight and a long batch wait: about 0.3 s per example, time to kill it.
    slow = annotate_cmd(student, killed, "--concurrency=1", "--student_batch_wait=0.3")
    proc = subprocess.Popen(slow, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if killed.exists() and killed.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert 3 <= len(by_id(killed)) < len(expected)

    resumed = subprocess.run(annotate_cmd(student, killed), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "already cached" in resumed.stderr and "done: every input example is in the cache" in resumed.stderr
    assert f"{student['inputs']}:21 (id 'long'): input too long" in resumed.stderr
    assert by_id(killed) == expected
    assert killed.read_bytes().count(b"\n") == len(expected)


def test_binary_usage_errors(student, tmp_path):
    out = tmp_path / "c.jsonl"
    run = functools.partial(subprocess.run, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    missing = run(annotate_cmd({**student, "ckpt": tmp_path / "no_ckpt"}, out))
    assert missing.returncode == 2 and f"{tmp_path / 'no_ckpt'}" in missing.stderr
    both = run(annotate_cmd(student, out, "--task=dss_synthetic", "--split=unlabeled"))
    assert both.returncode == 2 and "exactly one of --input" in both.stderr
    prompt = run(annotate_cmd(student, out, "--prompt=cot"))
    assert prompt.returncode == 2 and "takes no --prompt" in prompt.stderr
    assert not out.exists()


def test_a_batch_larger_than_the_run_is_sized_by_its_rows(student, tmp_path):
    """--student_batch_size=100000 for 21 inputs used to pad every decode to 100000 rows
    (and start as many worker threads)."""
    out = tmp_path / "c.jsonl"
    cmd = annotate_cmd(student, out, "--student_batch_size=100000")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--student_batch_size=100000 is more than the 21 rows (examples x samples) to decode" in proc.stderr
    assert len(by_id(out)) == 21
