"""Data, annotation and sweeps on gs:// (the GCS emulator of conftest's `gcs` fixture): a
teacher cache or a pretraining corpus read where it is, annotate's cache written there
and resumed after a kill without losing a record. (A sweep on gs://: tests/test_sweep.py.)"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import seqio
import teacher_script as ts

from conftest import REPO_ROOT, write_parity_task_files
from dss_jax import files
from dss_jax.data import options as dss_options
from dss_jax.data import pretrain, vocab
from dss_jax.data import tasks as dss_tasks
from dss_jax.data.cache import CacheFormatError, CacheWriter, read_cache, working_copy_path
from dss_jax.teacher.fake_server import ScriptedOpenAIServer

LENGTHS = {"label_inputs": 32, "label_targets": 8, "rationale_inputs": 32, "rationale_targets": 16}


def _examples(task, split):
    return [
        {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in ex.items()}
        for ex in task.get_dataset(LENGTHS, split=split, shuffle=False, use_cached=False).as_numpy_iterator()
    ]


def test_a_teacher_cache_on_gs_gives_the_examples_of_the_same_cache_read_locally(tmp_path, gcs):
    train, spm = write_parity_task_files(tmp_path, 24)
    remote = f"{gcs}/parity/train.jsonl"
    files.upload(train, remote)
    files.upload(train, f"{gcs}/parity/test.jsonl")
    vocabulary = vocab.from_checkpoint(spm)
    opts = dss_options.TaskOptions()
    try:
        here = dss_tasks.register_cache_task(
            "gcs_parity_local", train_cache=train, test_cache=train, vocabulary=vocabulary, family="cqa", options=opts
        )
        there = dss_tasks.register_cache_task(
            "gcs_parity_remote",
            train_cache=remote,
            test_cache=f"{gcs}/parity/test.jsonl",
            vocabulary=vocabulary,
            family="cqa",
            options=opts,
        )
        for split in ("train", "validation", "test"):
            local_examples = _examples(here, split)
            assert local_examples and _examples(there, split) == local_examples
        assert dss_tasks.split_records("gcs_parity_remote", "train") == dss_tasks.split_records(
            "gcs_parity_local", "train"
        )
    finally:
        for name in ("gcs_parity_local", "gcs_parity_remote"):
            seqio.TaskRegistry.remove(name)


def test_a_bad_line_of_a_cache_on_gs_is_named_by_its_url(gcs):
    bad = f"{gcs}/bad.jsonl"
    files.path(bad).write_text('{"id": "a", "input": "x"}\n{"id": "b"}\n')
    with pytest.raises(CacheFormatError, match=f"^{bad}:2: missing required field 'input'"):
        read_cache(bad)
    with pytest.raises(CacheFormatError, match=f"^{bad}:2: "):
        CacheWriter(bad)  # nothing is written to a cache that does not read
    assert files.path(bad).read_text() == '{"id": "a", "input": "x"}\n{"id": "b"}\n'


def test_a_cache_on_gs_written_in_process_keeps_its_records_and_its_torn_tail(tmp_path, gcs, monkeypatch):
    monkeypatch.setenv("DSS_CACHE_DIR", str(tmp_path / "dss_cache"))
    path = f"{gcs}/c.jsonl"
    files.path(path).write_text('{"id": "a", "input": "x"}\n{"id": "b", "inp')  # an upload cut short by hand
    with CacheWriter(path, upload_seconds=1000) as writer:
        assert writer.ids == {"a"} and writer.torn_path.startswith(f"{path}.torn-")
        assert files.path(writer.torn_path).read_text() == '{"id": "b", "inp'
        assert files.path(path).read_text() == '{"id": "a", "input": "x"}\n'  # settled, and uploaded
        writer.write({"id": "c", "input": "y"})
        assert [r.id for r in read_cache(path)] == ["a"]  # not uploaded yet ...
        writer.sync()
        assert [r.id for r in read_cache(path)] == ["a", "c"]  # ... until a sync
        writer.write({"id": "d", "input": "z"})
        with pytest.raises(ValueError, match="already in the cache"):
            writer.write({"id": "a", "input": "again"})
    assert [r.id for r in read_cache(path)] == ["a", "c", "d"]  # and at the close
    assert not os.path.exists(working_copy_path(path))


def test_the_paper_layout_is_imported_from_gs(tmp_path, gcs):
    """A data dir given as gs:// (data_locations, DSS_PALM_DIR): the paper's files read there."""
    from dss_jax.data import dss_paper

    rows = [{"Body": f"Ann has {i} apples.", "Question": "How many?", "Equation": f"( {i} + 0 )"} for i in range(3)]
    base = f"{gcs}/dss_palm/svamp"
    files.path(f"{base}/svamp_test.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    completions = [f"Ann has {i}. The answer is {i} + 0." for i in range(3)]
    files.path(f"{base}/llm/test_CoT_0.json").write_text(json.dumps(completions))
    records = dss_paper.import_split(f"{gcs}/dss_palm", "svamp", "test")
    assert [r.id for r in records] == ["svamp/test/0", "svamp/test/1", "svamp/test/2"]
    out = f"{gcs}/imported/svamp_test.jsonl"
    dss_paper.write_cache(records, out)
    assert read_cache(out) == records
    with pytest.raises(FileExistsError, match=out):
        dss_paper.write_cache(records, out)


def _lines(path):
    p = files.path(path)
    return p.read_bytes().count(b"\n") if p.exists() else 0


def _by_id(path):
    return {r.id: r.to_json() for r in read_cache(path)}


def test_annotate_writes_its_cache_to_gs_and_a_killed_run_resumes_it_losing_nothing(tmp_path, gcs, monkeypatch):
    monkeypatch.setenv("DSS_CACHE_DIR", str(tmp_path / "dss_cache"))  # the working copy's home, for us and the child
    prompt = ts.write_prompt(tmp_path / "prompt.txt")
    first_ten, every = tmp_path / "in10.jsonl", tmp_path / "in30.jsonl"
    ts.write_inputs(first_ten, 10)
    ts.write_inputs(every, 30)
    cache = f"{gcs}/teacher/cache.jsonl"
    working = working_copy_path(cache)

    with ScriptedOpenAIServer(ts.teacher, delay=0.03) as server:

        def command(inputs, output, *extra):
            return [sys.executable, "-m", "dss_jax.annotate", f"--input={inputs}", f"--output={output}",
                    f"--prompt={prompt}", "--dataset_family=svamp", "--model=scripted",
                    f"--base_url={server.base_url}", "--noprogress", "--num_samples=2", "--temperature=0.8",
                    "--concurrency=2", *extra]  # fmt: skip

        def run(*cmd):
            done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-3000:]
            return done

        reference = tmp_path / "reference.jsonl"  # the same annotation, uninterrupted, on disk
        run(*command(every, reference))
        expected = _by_id(reference)

        run(*command(first_ten, cache))
        there = _by_id(cache)
        assert set(there) == {f"ex{k:03d}" for k in range(10)} and not os.path.exists(working)

        def kill_when(cmd, ready):
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None and not ready():
                time.sleep(0.02)
            assert proc.poll() is None, "the run finished before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

        # Uploading after every record: what the object holds after a kill is each record
        # written so far, the ten that were there first unchanged.
        kill_when(command(every, cache, "--cache_upload_seconds=0"), lambda: _lines(cache) >= 16)
        uploaded = _by_id(cache)
        assert 16 <= len(uploaded) < 30 and {k: uploaded[k] for k in there} == there

        # Never uploading before the end: killed, the object is as it was (and the one record
        # the first kill may have caught between its write and its upload, which this run
        # found in the working copy and uploaded first), and the records are in the local
        # working copy ...
        kill_when(command(every, cache, "--cache_upload_seconds=1000"), lambda: _lines(working) >= len(uploaded) + 6)
        at_kill = _by_id(cache)
        assert {k: at_kill[k] for k in uploaded} == uploaded and len(at_kill) <= len(uploaded) + 1
        left = _by_id(working)
        assert len(left) >= len(uploaded) + 6 and {k: left[k] for k in at_kill} == at_kill

        # ... which the next run puts in the cache before it asks the teacher for the rest.
        requests = len(server.log)
        resumed = run(*command(every, cache))
        assert "already cached" in resumed.stderr
        assert f"appended {len(left) - len(at_kill)} records that a run stopped before uploading" in resumed.stderr
        asked = {ts.item_of(r.prompt) for r in server.log[requests:]}
        assert asked == set(range(30)) - {int(k[2:]) for k in left}

    assert _by_id(cache) == expected  # every record once, as the uninterrupted run wrote it
    assert _lines(cache) == 30 and not os.path.exists(working)


def test_a_pretraining_corpus_on_gs_is_read_as_the_local_file(tmp_path, gcs):
    lines = [f"Ann has {i} apples and buys {i + 3} more apples at the market." for i in range(60)]
    text = "\n".join(lines) + "\r\n" + "The last line, with no line end."
    (tmp_path / "corpus.txt").write_bytes(text.encode())
    remote = f"{gcs}/corpus/corpus.txt"
    files.upload(tmp_path / "corpus.txt", remote)
    spm = vocab.train_vocabulary(lines, tmp_path / "v.model", vocab.VocabSettings(vocab_size=300))
    vocabulary = seqio.SentencePieceVocabulary(str(spm), extra_ids=20)
    lengths = {"label_inputs": 1, "label_targets": 15, "rationale_inputs": 8, "rationale_targets": 8}
    chunks = {}
    try:
        for name, where in (("gcs_corpus_local", [tmp_path / "corpus.txt"]), ("gcs_corpus_remote", [remote])):
            task = pretrain.register_causal_lm_task(name, where, vocabulary, length=16)
            ds = task.get_dataset(lengths, split="train", shuffle=False, use_cached=False)
            chunks[name] = [ex["label_targets"].tolist() for ex in ds.as_numpy_iterator()]
        # A local file and a gs:// one in one split: read in order, as TextLineDataset reads files.
        task = pretrain.register_causal_lm_task(
            "gcs_corpus_both", [remote, tmp_path / "corpus.txt"], vocabulary, length=16
        )
        both = task.get_dataset(lengths, split="train", shuffle=False, use_cached=False)
        assert len(list(both.as_numpy_iterator())) >= 2 * len(chunks["gcs_corpus_local"]) - 1
    finally:
        for name in ("gcs_corpus_local", "gcs_corpus_remote", "gcs_corpus_both"):
            if name in seqio.TaskRegistry.names():
                seqio.TaskRegistry.remove(name)
    assert chunks["gcs_corpus_local"] and chunks["gcs_corpus_remote"] == chunks["gcs_corpus_local"]
    lines_read = [x.decode() for x in pretrain.text_lines([remote]).as_numpy_iterator()]
    assert lines_read == lines + ["The last line, with no line end."]
    missing = pretrain.register_causal_lm_task("gcs_corpus_missing", [f"{gcs}/nope.txt"], vocabulary, length=16)
    try:
        with pytest.raises(FileNotFoundError, match=f"text file not found: {gcs}/nope.txt"):
            missing.get_dataset(lengths, split="train", shuffle=False, use_cached=False)
    finally:
        seqio.TaskRegistry.remove("gcs_corpus_missing")
