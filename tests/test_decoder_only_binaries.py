"""Every binary with a decoder-only student on the built-in task: convert a Hugging Face
Llama with its tokenizer.json, train from it (a batch in examples, microbatches), resume
bit-exact, eval and infer (labels and rationales; greedy, beam, sampling), export and
`generate` the same tokens in transformers; and train one from scratch."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_data_vocab import _tokenizer_dir

from conftest import REPO_ROOT

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LENGTHS = "{'label_inputs': 96, 'label_targets': 24, 'rationale_inputs': 96, 'rationale_targets': 96}"
STEPS = 4


def run(binary, *args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", f"dss_jax.{binary}", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random tiny Llama saved by transformers, with a tokenizer trained on the task's text."""
    import gin
    import tasks.synthetic
    from dss_jax.data import vocab

    directory = tmp_path_factory.mktemp("llama")
    gin.clear_config()
    texts = vocab.cache_texts([tasks.synthetic.cache_path("train")])
    config = {
        "eos_token": "<eos>",
        "bos_token": "<bos>",
        "pad_token": "<pad>",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    _tokenizer_dir(directory, config, texts, vocab_size=600, bos=True)
    size = vocab.TokenizerJsonVocabulary(directory).vocab_size
    config = transformers.LlamaConfig(
        vocab_size=size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def train_args(model_dir, *extra):
    return [
        "--gin_file=runs/train.gin",
        "--gin_file=tasks/synthetic.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.TRAIN_STEPS={STEPS}",
        "--gin.BATCH_SIZE=8",
        f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
        "--gin.DssFeatureConverter.pack_encoder_length=128",
        "--gin.DssFeatureConverter.pack_decoder_length=128",
        "--gin.train.log_period=1",
        "--gin.train.checkpoint_period=2",
        "--gin.train.eval_batches_limit=1",
        "--gin.make_train_eval_hook.max_examples=4",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(hf_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("decoder_only_runs")
    r = run("convert", f"--hf_dir={hf_dir}", f"--output={root / 'ckpt'}")
    assert r.returncode == 0, r.stderr[-3000:]
    model_dir = root / "run"
    r = run(
        "train",
        *train_args(
            model_dir,
            f"--gin.INITIAL_CHECKPOINT_PATH='{root / 'ckpt'}'",
            "--gin.BATCH_UNIT='examples'",
            "--gin.train.num_microbatches=2",
            f"--gin.EVAL_PERIOD={STEPS}",
        ),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return root, model_dir


def _metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def eval_predictions(model_dir, out, *extra) -> list[dict]:
    """The eval binary on the run's latest checkpoint (test split): its predictions.jsonl rows."""
    r = run(
        "eval",
        "--gin_file=runs/eval.gin",
        "--gin_file=tasks/synthetic.gin",
        f"--gin.CHECKPOINT_PATH='{model_dir}'",
        f"--gin.EVAL_OUTPUT_DIR='{out}'",
        f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
        *extra,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (predictions,) = out.rglob("predictions.jsonl")
    return _metrics(predictions)


def test_it_trains_from_a_converted_checkpoint_with_its_tokenizer(trained, hf_dir):
    _, model_dir = trained
    train = _metrics(model_dir / "train" / "metrics.jsonl")
    assert [m["step"] for m in train] == list(range(1, STEPS + 1))
    assert all(m["examples_per_step"] == 8 for m in train)  # a batch in examples
    assert all(np.isfinite(m["loss"]) and m["label/tokens"] > 0 and m["rationale/tokens"] > 0 for m in train)
    validation = _metrics(model_dir / "validation" / "metrics.jsonl")
    assert validation[-1]["step"] == STEPS and "decode/accuracy" in validation[-1]
    # The run keeps the tokenizer it was trained with, as a T5 run keeps its spiece.model.
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (model_dir / name).read_bytes() == (hf_dir / name).read_bytes()
    assert json.loads((model_dir / "config.json").read_text())["family"] == "decoder_only"


def test_a_resumed_run_is_bit_exact(trained, tmp_path):
    from dss_jax import checkpoints

    root, model_dir = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(model_dir, resumed)
    shutil.rmtree(resumed / f"checkpoint_{STEPS}")  # as if killed after checkpoint 2
    r = run(
        "train",
        *train_args(
            resumed,
            f"--gin.INITIAL_CHECKPOINT_PATH='{root / 'ckpt'}'",
            "--gin.BATCH_UNIT='examples'",
            "--gin.train.num_microbatches=2",
            f"--gin.EVAL_PERIOD={STEPS}",
        ),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming at step 2" in r.stderr
    a, _, _ = checkpoints.load_params(model_dir / f"checkpoint_{STEPS}")
    b, _, _ = checkpoints.load_params(resumed / f"checkpoint_{STEPS}")
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_eval_decodes_labels_and_rationales(trained, tmp_path, method):
    _, model_dir = trained
    out = tmp_path / "eval"
    rows = eval_predictions(
        model_dir,
        out,
        "--gin.MAX_EXAMPLES=6",
        "--gin.OUTPUT_RATIONALE=True",
        f"--gin.DecodeSettings.method='{method}'",
        "--gin.DecodeSettings.num_beams=2",
    )
    assert len(rows) == 6 and all("rationale" in row and "prediction" in row for row in rows)


def test_infer_samples_and_export_generates_the_same_tokens_in_transformers(trained, tmp_path):
    from dss_jax.data.paired import LABEL_PREFIX

    _, model_dir = trained
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps({"id": f"q{i}", "input": text}) + "\n" for i, text in enumerate(["Ann has 3 pens.", "Bo"]))
    )
    out = tmp_path / "out.jsonl"
    r = run(
        "infer",
        "--gin_file=runs/infer.gin",
        "--gin_file=tasks/synthetic.gin",
        f"--gin.CHECKPOINT_PATH='{model_dir}'",
        f"--gin.INFER_INPUT='{source}'",
        f"--gin.INFER_OUTPUT='{out}'",
        f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
        "--gin.OUTPUT_RATIONALE=True",
        "--gin.DecodeSettings.method='sample'",
        "--gin.DecodeSettings.temperature=0.7",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert [row["id"] for row in _metrics(out)] == ["q0", "q1"]

    exported = tmp_path / "hf"
    r = run("export", f"--checkpoint={model_dir}", f"--output={exported}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (exported / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()
    # The prompt as a transformers user writes it: the tokenizer adds BOS, the prompt ends in EOS.
    _export_generates_our_tokens(model_dir, exported, LABEL_PREFIX + "Ann has 3 pens and buys 2.")


def _export_generates_our_tokens(model_dir, exported, text):
    """transformers' tokenizer from the export makes the prompt our encoding makes (plus the
    EOS that ends every prompt), and its greedy `generate` gives our greedy tokens."""
    from dss_jax import checkpoints
    from dss_jax.data import vocab
    from dss_jax.model.decoding import DecodeConfig, generate
    from dss_jax.prediction import encode_input

    ((_, path),) = checkpoints.select_checkpoints(str(model_dir), "latest")
    model, params, vocab_path = checkpoints.load_checkpoint(path)
    row, full = encode_input(vocab.from_checkpoint(vocab_path), text, 96, separator=False)
    ours = np.asarray(generate(model, params, row[None], config=DecodeConfig(max_decode_length=12)).tokens)[0]
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    prompt = hf_tokenizer(text)["input_ids"] + [hf_tokenizer.eos_token_id]
    assert prompt == row[:full].tolist()
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    with torch.no_grad():
        generated = hf_model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt) :]
    theirs = generated.tolist()
    stop = theirs.index(1) + 1 if 1 in theirs else len(theirs)
    assert ours[:stop].tolist() == theirs[:stop]


def test_it_trains_from_scratch_with_the_tasks_own_vocabulary(tmp_path):
    model_dir = tmp_path / "scratch"
    r = run(
        "train",
        *train_args(
            model_dir,
            "--gin_file=models/decoder_only_tiny.gin",
            "--gin.DecoderOnlyConfig.vocab_size=1000",
            "--gin.EVAL_PERIOD=0",
        ),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    train = _metrics(model_dir / "train" / "metrics.jsonl")
    assert train[-1]["loss"] < train[0]["loss"] and train[0]["label/loss"] < 1.5 * np.log(1000)
    assert (model_dir / "spiece.model").is_file()
    from dss_jax.data.paired import LABEL_PREFIX

    # Exported with a tokenizer.json written from the spiece.model.
    exported = tmp_path / "hf"
    r = run("export", f"--checkpoint={model_dir}", f"--output={exported}")
    assert r.returncode == 0, r.stderr[-3000:]
    _export_generates_our_tokens(model_dir, exported, LABEL_PREFIX + "Ann has 3 pens and buys 2 more * ü.")


def test_a_vocabulary_with_another_eos_is_refused_before_anything_is_written(tmp_path):
    model_dir = tmp_path / "other_eos"
    r = run(
        "train",
        *train_args(
            model_dir,
            "--gin_file=models/decoder_only_tiny.gin",
            "--gin.DecoderOnlyConfig.vocab_size=1000",
            "--gin.DecoderOnlyConfig.eos_token_id=2",
            "--gin.EVAL_PERIOD=0",
        ),
    )
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "ends texts with id 1, but the model stops decoding at eos_token_id=2" in last
    assert not model_dir.exists()


def test_annotate_with_the_student_as_teacher(trained, tmp_path):
    from dss_jax.data.cache import load_records

    _, model_dir = trained
    inputs = tmp_path / "inputs.jsonl"
    rows = [
        {"id": f"q{i}", "input": f"Ann has {i} pens and buys 2. How many pens?", "label": str(i + 2)} for i in range(3)
    ]
    inputs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "student.jsonl"
    r = run(
        "annotate",
        "--backend=student",
        f"--checkpoint={model_dir}",
        f"--input={inputs}",
        f"--output={out}",
        "--dataset_family=svamp",
        "--noprogress",
        "--student_input_length=96",
        "--student_label_length=24",
        "--max_tokens=16",
        "--student_batch_size=2",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    records = load_records(out)
    assert sorted(rec.id for rec in records) == ["q0", "q1", "q2"]
    assert all(len(rec.samples) == 1 and rec.samples[0].teacher.startswith("student:") for rec in records)


def test_the_single_task_ablation_trains_one_target_and_eval_splits_it(tmp_path):
    """λ = 0 with the label target 'rationale_then_label': one `predict:` target holding
    both parts (24 + 96 tokens); eval reads how the run was trained from its task.json and
    splits them. Rows too short for that target are named in one line first."""
    model_dir = tmp_path / "single_task"
    single_task = [
        "--gin_file=models/decoder_only_tiny.gin",
        "--gin.DecoderOnlyConfig.vocab_size=1000",
        "--gin.EVAL_PERIOD=0",
        "--gin.RATIONALE_WEIGHT=0.0",
        "--gin.task_options.label_target='rationale_then_label'",
    ]
    r = run("train", *train_args(model_dir, *single_task, "--gin.DssFeatureConverter.pack_decoder_length=100"))
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and "Traceback" not in r.stderr and not model_dir.exists()
    assert "DssFeatureConverter.pack_decoder_length=100 < 120; raise it or shorten TASK_FEATURE_LENGTHS" in last
    r = run("train", *train_args(model_dir, *single_task))
    assert r.returncode == 0, r.stderr[-3000:]
    train = _metrics(model_dir / "train" / "metrics.jsonl")
    assert all(m["rationale/tokens"] == 0 and m["label/tokens"] > 0 for m in train)
    out = tmp_path / "eval"
    rows = eval_predictions(model_dir, out, "--gin.MAX_EXAMPLES=4")
    assert len(rows) == 4 and all("rationale" in row and "prediction" in row for row in rows)
