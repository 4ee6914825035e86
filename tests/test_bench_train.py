"""The training benchmark compares like with like: the same objective on the same
examples (the reference's two padded passes vs dss_jax's packed rows), the FLOPs
formula counts the model's matmuls, and the scripts run end to end on tiny sizes."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))

import flops
import train_data

from dss_jax.model.config import T5Config
from dss_jax.model.t5 import init_variables


def _kernel_sizes(config):
    """Parameter counts of the model's matmul kernels, read from its own parameter tree."""
    abstract = jax.eval_shape(lambda k: init_variables(config, k), jax.random.key(0))["params"]
    abstract = nn.meta.unbox(abstract)
    sizes = {"encoder": 0, "decoder": 0, "lm_head": 0, "decoder_cross_kv": 0}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        keys = [getattr(k, "key", "") for k in path]
        size = int(np.prod(leaf.shape))
        if keys[-1] != "kernel":
            continue
        if keys[0] == "decoder" and keys[1] == "logits_dense":
            sizes["lm_head"] += size
        elif keys[0] == "decoder" and "encoder_decoder_attention" in keys and keys[-2] in ("key", "value"):
            sizes["decoder_cross_kv"] += size
        else:
            sizes[keys[0]] += size
    return sizes


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_flops_formula_counts_every_matmul_once(size):
    config = T5Config.preset(size, "t5.1.1", vocab_size=512)
    k = _kernel_sizes(config)
    a = config.num_heads * config.d_kv
    # One encoder token and one decoder token: every kernel is applied once (cross k/v on
    # the encoder token), plus the attention products of length-1 sequences.
    expected = (
        k["encoder"]
        + k["decoder"]
        + k["decoder_cross_kv"]
        + k["lm_head"]
        + config.num_encoder_layers * 2 * a
        + config.num_decoder_layers * 4 * a
    )
    assert flops.segment_macs(config, 1, 1) == expected
    # The quadratic attention terms grow with the segment lengths as written down.
    s_e, s_d = 30, 20
    linear = s_e * k["encoder"] + s_d * k["decoder"] + s_e * k["decoder_cross_kv"] + s_d * k["lm_head"]
    attention = config.num_encoder_layers * 2 * s_e * s_e * a + config.num_decoder_layers * (
        2 * s_d * s_d * a + 2 * s_d * s_e * a
    )
    assert flops.segment_macs(config, s_e, s_d) == linear + attention
    assert flops.train_flops(config, [(s_e, s_d), (1, 1)]) == 6 * (linear + attention + expected)


def test_peak_tflops_by_device_name():
    assert flops.peak_tflops("NVIDIA H200") == 989.0
    assert flops.peak_tflops("NVIDIA GH200 480GB") == 989.0
    assert flops.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert flops.peak_tflops("cpu") is None
    assert flops.mfu(989e12 * 0.5, 1.0, 989.0) == pytest.approx(0.5)


def test_feature_lengths_follow_the_gin_task_files():
    lengths, rows = train_data.feature_lengths("svamp")
    text = (REPO_ROOT / "gin" / "tasks" / "svamp.gin").read_text()
    assert f'"rationale_targets": {lengths["rationale_targets"]}' in text
    assert f"pack_encoder_length = {rows[0]}" in text and f"pack_decoder_length = {rows[1]}" in text
    with pytest.raises(FileNotFoundError, match="nope.gin"):
        train_data.feature_lengths("nope")


def _random_examples(rng, n, vocab):
    out = []
    for _ in range(n):
        ex = {}
        for key, (lo, hi) in {
            "label_inputs": (5, 20),
            "label_targets": (2, 6),
            "rationale_inputs": (5, 20),
            "rationale_targets": (4, 16),
        }.items():
            ids = rng.integers(2, vocab, rng.integers(lo, hi)).astype(np.int32)
            ex[key] = np.append(ids, 1).astype(np.int32)  # EOS last
        out.append(ex)
    return out


@pytest.mark.torch
def test_reference_two_pass_loss_equals_packed_loss_and_one_step_agrees():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import reference_t5
    import train_setup

    from dss_jax import losses, optimizers, partitioning
    from dss_jax.model import hf_convert
    from dss_jax.model.encoder_decoder import EncoderDecoderModel
    from dss_jax.training.step import Trainer

    torch.set_num_threads(1)
    config = T5Config.preset("tiny", "t5.1.1", vocab_size=128, dropout_rate=0.0)
    rng = np.random.default_rng(0)
    examples = _random_examples(rng, 6, config.vocab_size)
    lengths = {"label_inputs": 24, "label_targets": 8, "rationale_inputs": 24, "rationale_targets": 16}

    params = train_setup.initial_params(config, seed=0)
    model = reference_t5.hf_model(config, params)
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()  # v1.1: untied
    ref = reference_t5.ReferenceStep(model, alpha=0.5, total_steps=10)
    batch = reference_t5.collate(examples)

    trainer = Trainer(
        EncoderDecoderModel(config),
        loss_config=losses.LossConfig(rationale_weight=1.0),
        optimizer_config=optimizers.OptimizerConfig(name="adamw", learning_rate=5e-5, clip_grad_norm=1.0),
        total_steps=10,
        mesh=partitioning.make_mesh(1, jax.devices()[:1]),
    )
    state = trainer.state_from_params(params)
    rows, (n_rows,) = train_setup.pack_steps([examples], lengths, (48, 32))
    assert n_rows < len(examples)  # several segments share a row
    # Both sides see the same real tokens.
    assert train_setup.packed_real_tokens(rows[0]) == reference_t5.real_tokens(batch)

    jbatch = trainer.global_batch(rows[0])
    summed = {k: float(v) for k, v in trainer.eval_step(state.params, jbatch).items()}
    ours = losses.finalize_metrics(summed)
    model.eval()
    with torch.no_grad():
        ref_loss = float(ref.loss(batch))
    # alpha = 0.5: the reference's loss is half of label + 1.0 * rationale.
    assert 2 * ref_loss == pytest.approx(ours["label/loss"] + ours["rationale/loss"], rel=1e-4)

    before = params
    state, metrics = trainer.train_step(state, jbatch)
    ref.step(batch)
    after_ref = hf_convert.hf_to_params(reference_t5.hf_weights(ref.model), config)
    ours_delta = jax.tree_util.tree_map(lambda a, b: np.asarray(a) - b, state.params, before)
    ref_delta = jax.tree_util.tree_map(lambda a, b: a - b, after_ref, before)
    diff = sum(
        float(np.abs(o - r).sum())
        for o, r in zip(jax.tree_util.tree_leaves(ours_delta), jax.tree_util.tree_leaves(ref_delta))
    )
    scale = sum(float(np.abs(r).sum()) for r in jax.tree_util.tree_leaves(ref_delta))
    assert scale > 0 and diff < 1e-4 * scale  # the same AdamW step (lr 5e-5, clipping, schedule)


def _run(args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.torch
def test_make_bench_quick_runs_the_train_benchmark(tmp_path):
    out = _run([sys.executable, "bench/run_all.py", "--quick", "--only=train_throughput", f"--out_dir={tmp_path}"])
    (result,) = _json_lines(out)
    assert result["size"] == "tiny" and result["examples_per_step"] == 4
    # --rows_per_microbatch=1: one microbatch per packed row
    assert result["jax"]["microbatches_per_step"] == result["jax"]["rows_per_step"]
    for side in ("ref", "jax"):
        assert len(result[side]["step_s"]) == 2 and result[side]["real_tokens_per_s"] > 0
        assert np.isfinite(result[side]["losses"]).all()
    assert result["speedup"] > 0
    assert "dss_jax / reference real tokens/s" in out and "train_throughput       ok" in out


@pytest.mark.torch
def test_the_decoder_only_bench_trains_and_decodes_the_same_on_both_sides(tmp_path):
    out = _run([sys.executable, "bench/run_all.py", "--quick", "--only=decoder_only", f"--out_dir={tmp_path}"])
    result = json.loads((tmp_path / "decoder_only.json").read_text())["sizes"]["tiny"]
    train, decode = result["train"], result["decode"]
    # The same weights and examples: the same first loss, the same greedy tokens.
    assert train["first_loss"]["jax"] == pytest.approx(train["first_loss"]["transformers"], rel=1e-5)
    assert decode["rows_identical"] == decode["rows"] == 2
    assert train["ratio"] > 0 and decode["ratio"] > 0 and "decoder_only           ok" in out


def test_make_bench_rejects_unknown_benchmarks():
    proc = subprocess.run(
        [sys.executable, "bench/run_all.py", "--only=nope"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert proc.returncode != 0 and "unknown benchmarks ['nope']" in proc.stderr


@pytest.mark.torch
def test_gpu_script_dry_run_on_cpu(tmp_path):
    out_file = tmp_path / "gpu.jsonl"
    env_python = {"PYTHON": sys.executable, "DRY_RUN_OUT": str(out_file), "DATASETS": "synthetic", "IMPL": "both"}
    env = dict(os.environ, **env_python)
    profile = tmp_path / "profile"
    proc = subprocess.run(
        ["bash", "bench/gpu.sh", "--dry-run", f"--profile_dir={profile}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # One dss_jax step traced after the timed ones (the reference's process traces nothing).
    assert len(list(profile.rglob("perfetto_trace.json.gz"))) == 1
    # One process per side, dss_jax first; then the ratio of the two.
    jax_run, ref_run = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert "ref" not in jax_run and "jax" not in ref_run
    for run in (jax_run, ref_run):
        assert run["dtype"] == "bfloat16" and run["size"] == "tiny"
    assert 0 < jax_run["jax"]["mfu"] and jax_run["jax"]["peak_tflops"] == 1.0
    assert jax_run["real_tokens_per_step"] == ref_run["real_tokens_per_step"]
    ratio = jax_run["jax"]["real_tokens_per_s"] / ref_run["ref"]["real_tokens_per_s"]
    assert f"== synthetic tiny: dss_jax / reference real tokens/s {ratio:.2f}x" in proc.stdout


def test_tokenized_split_is_cached_and_loads_without_tensorflow_or_seqio(tmp_path):
    """A GPU box with only JAX and PyTorch runs the benchmark from a copied cache folder."""
    env = dict(os.environ, DSS_CACHE_DIR=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="3")
    code = """
import sys, json
if sys.argv[1] == "blocked":
    for name in ("tensorflow", "seqio", "tensorflow_text"):
        sys.modules[name] = None  # any import of them raises ImportError
sys.path[:0] = [%r, %r]
import numpy as np
import train_data
from dss_jax.data.packing import convert_numpy
examples, lengths, rows, vocab_size, dataset, source = train_data.load_tokenized("synthetic", 30, seed=3)
packed = convert_numpy(examples, lengths, pack=True, pack_encoder_length=rows[0], pack_decoder_length=rows[1])
print(json.dumps({"examples": [{k: v.tolist() for k, v in ex.items()} for ex in examples],
                  "vocab_size": vocab_size, "rows": packed["encoder_input_tokens"].tolist()}))
""" % (str(REPO_ROOT / "bench"), str(REPO_ROOT))

    def run(mode):
        proc = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, env=env, timeout=600)
        return proc, (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None)

    blocked, _ = run("blocked")  # nothing cached yet: the vocabulary trainer needs seqio
    assert blocked.returncode != 0 and "seqio" in blocked.stderr
    fresh_proc, fresh = run("full")
    assert fresh_proc.returncode == 0, fresh_proc.stderr[-3000:]
    assert list((tmp_path / "cache" / "bench").glob("tokenized_synthetic_*.npz"))
    cached_proc, cached = run("blocked")
    assert cached_proc.returncode == 0, cached_proc.stderr[-3000:]
    assert "tokenized synthetic from" in cached_proc.stdout
    assert cached == fresh and len(cached["examples"]) == 30 and cached["rows"]


def test_gpu_script_refuses_without_a_gpu():
    env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
    proc = subprocess.run(["bash", "bench/gpu.sh"], cwd=REPO_ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "JAX sees no GPU" in proc.stderr and "--dry-run" in proc.stderr


def test_gemm_ceiling_measures_every_matmul_form(tmp_path):
    out_file = tmp_path / "gemm.jsonl"
    out = _run(
        [
            sys.executable,
            "bench/gemm_ceiling.py",
            "--tokens=64",
            "--repeats=1",
            "--dtypes=float32",
            f"--json_out={out_file}",
        ]
    )
    (record,) = [json.loads(line) for line in out_file.read_text().splitlines()]
    (result,) = record["results"]
    forms = {(r["matmul"], r["form"]) for r in result["rows"]}
    assert len(forms) == 15 and {f for _, f in forms} == {"forward", "input grad", "weight grad"}
    assert all(r["jax_gflops"] > 0 and r["torch_gflops"] > 0 for r in result["rows"])
    assert result["jax_gflops"] > 0 and "step's matmul mix" in out


def test_decode_floor_times_the_decoder_kernels_of_one_step():
    # The products bench/decode_floor.py times per generated token are exactly the
    # decoder's kernels, less the cross-attention keys/values (made once per call).
    import decode_floor

    config = T5Config.preset("small", "t5.1.1", vocab_size=32128)
    sizes = _kernel_sizes(config)
    per_layer = sum(k * n for k, n in decode_floor.step_matmul_shapes("small"))
    assert per_layer * config.num_decoder_layers == sizes["decoder"]  # _kernel_sizes counts cross k/v apart


@pytest.mark.torch
def test_decode_floor_runs_end_to_end():
    out = _run(
        [sys.executable, "bench/decode_floor.py", "--sizes=tiny", "--batch_size=2", "--max_new_tokens=3", "--repeats=1"]
    )
    rows = _json_lines(out)
    assert [r["method"] for r in rows] == ["greedy", "beam4"]
    assert [r["rows_per_step"] for r in rows] == [2, 8]  # beams multiply the rows of a step
    for r in rows:
        assert r["xla_ms"] > r["xla_lm_head_ms"] > 0 and r["torch_ms"] > r["torch_lm_head_ms"] > 0
        assert r["dss_jax_call_s"] > 0 and r["transformers_call_s"] > 0
        assert np.isfinite([r["dss_jax_step_ms"], r["transformers_step_ms"]]).all()
    assert "one decoder step" in out


def test_gpu_sh_compares_the_last_record_of_each_side(tmp_path):
    import compare_sides

    records = [
        {"size": "base", "dataset": "svamp", "jax": {"real_tokens_per_s": 50.0, "mfu": 0.1}},  # superseded
        {"size": "base", "dataset": "svamp", "jax": {"real_tokens_per_s": 300.0, "mfu": 0.45}},
        {"size": "base", "dataset": "svamp", "ref": {"real_tokens_per_s": 100.0, "mfu": 0.15}},
        {"size": "large", "dataset": "svamp", "jax": {"real_tokens_per_s": 9.0}},  # another size
        {"size": "base", "dataset": "cqa", "jax": {"real_tokens_per_s": 9.0}},  # one side only
    ]
    path = tmp_path / "gpu.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert compare_sides.compare(str(path), "base") == [
        "== svamp base: dss_jax / reference real tokens/s 3.00x (MFU 45.0% vs 15.0%)"
    ]
