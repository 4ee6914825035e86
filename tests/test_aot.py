"""Ahead-of-time compilation of the real train step on a large virtual mesh (dss_jax.aot):
the per-device memory of the compiled executable and the sharding of the state.

The full XL/XXL table is launch/memory_table.py (minutes per row); these tests compile
small layer counts so that they fit the suite's budget."""

import math
import os
import re
import subprocess
import sys

import jax
import pytest

import gin
from conftest import REPO_ROOT, T5X_DATA
from dss_jax import aot, losses, optimizers, partitioning
from dss_jax.model import interface
from dss_jax.model.encoder_decoder import EncoderDecoderModel
from dss_jax.training.step import Trainer

# T5 v1.1 base shapes (d_model 768, 12 heads), one layer per stack, a 2048-token vocab:
# every rule-set constraint of the big models (heads and mlp divisible by the model axis,
# d_model by the data axis) at a compile time of seconds.
SMALL = dict(size="base", num_layers=1, vocab_size=2048, encoder_length=64, decoder_length=32)
NUM_FEATURES = 9  # the packed batch's features (aot.abstract_batch)


@pytest.fixture(scope="module")
def fsdp_tp_64():
    config = aot.AotConfig(**SMALL, rules="fsdp_tp", num_partitions=4, num_devices=64, batch_size=16)
    return aot.compile_in_subprocess(config, timeout=600)


def test_compiles_for_64_devices_with_the_state_sharded_and_donated(fsdp_tp_64):
    r = fsdp_tp_64
    assert r.mesh_shape == {"data": 16, "model": 4}
    assert r.replicated_large == []
    # The inputs of one device are exactly its state shards plus its rows of the batch:
    # nothing was replicated behind the shardings' back.
    rows = r.config.batch_size // r.mesh_shape["data"]
    batch_bytes = 4 * rows * (3 * r.config.encoder_length + 6 * r.config.decoder_length)
    assert r.argument_bytes == r.state_bytes_per_device + batch_bytes
    # The whole state is donated: the new state is written into the old state's buffers.
    assert r.alias_bytes == r.state_bytes_per_device
    assert r.total_bytes == r.argument_bytes + r.output_bytes - r.alias_bytes + r.temp_bytes
    # float32 weights over 64 devices, plus the (smaller) factored Adafactor statistics.
    weights_share = 4 * r.num_params / 64
    assert weights_share <= r.state_bytes_per_device <= 2 * weights_share
    assert 0 < r.temp_bytes < 1 << 30


def test_the_compiled_module_takes_only_shards(fsdp_tp_64):
    # The largest parameter is the token embedding [vocab, embed] = [2048, 768], split
    # 4-way over `model` (vocab) and 16-way over `data` (embed): the HLO's largest
    # per-device input must be exactly that shard.
    elements, shape = fsdp_tp_64.largest_entry_parameter
    assert elements == 2048 * 768 // 64, shape


def _trainer(rules, num_partitions, devices):
    config = aot.AotConfig(
        **SMALL, rules=rules, num_partitions=num_partitions, num_devices=len(devices), batch_size=len(devices)
    )
    return Trainer(
        EncoderDecoderModel(config.model_config()),
        loss_config=losses.LossConfig(),
        optimizer_config=optimizers.OptimizerConfig(name="adamw"),
        total_steps=10,
        partition_config=partitioning.PartitionConfig(rules=rules, num_partitions=num_partitions),
        mesh=partitioning.make_mesh(num_partitions, devices),
    )


def test_the_replication_check_catches_replicated_weights(cpu_devices):
    dp = _trainer("dp", 1, cpu_devices[:8])
    flagged = aot.replicated_large_tensors(dp.abstract_state, dp.state_sharding, d_model=768)
    paths = [p for p, _ in flagged]
    # every weight matrix and both of Adam's moments of it are whole on every device
    assert any("token_embedder" in p and ".params" in p for p in paths)
    assert any("mlp" in p and "mu" in p for p in paths)
    assert len(flagged) >= 3 * 20
    fsdp = _trainer("fsdp", 1, cpu_devices[:8])
    assert aot.replicated_large_tensors(fsdp.abstract_state, fsdp.state_sharding, d_model=768) == []


def test_largest_entry_parameter_reads_the_entry_signature():
    hlo = (
        "HloModule jit_step\n\n%fused (p: f32[4096,4096]) -> f32[4096,4096] {\n}\n\n"
        "ENTRY %main.12 (param: f32[32,5120], param.1: bf16[2,3,4], param.2: s32[]) -> (f32[32,5120], s32[]) {\n"
        "  %x = f32[99999] parameter(0)\n}\n"
    )
    assert aot.largest_entry_parameter(hlo) == [32 * 5120, "f32[32,5120]"]


def test_config_rejects_a_batch_the_data_axis_cannot_split():
    with pytest.raises(ValueError, match="multiple of the data-parallel size 64"):
        aot.AotConfig(size="xxl", rules="fsdp_tp", num_partitions=4, num_devices=256, batch_size=32)
    with pytest.raises(ValueError, match="must divide num_devices"):
        aot.AotConfig(num_partitions=3, num_devices=64)
    with pytest.raises(SystemExit) as e:
        aot.parse_args(["--num_devices=256", "--batch_size=64", "--rules=fsdp"])
    assert e.value.code == 2


def test_flags_round_trip_through_the_command_line():
    config = aot.AotConfig(**SMALL, rules="fsdp_tp", num_partitions=4, num_devices=8, batch_size=8, optimizer="adamw")
    assert aot.parse_args(config.flags() + ["--json_out=r.json"]) == (config, "r.json")


@pytest.mark.slow
def test_xl_layers_on_64_devices_fit_with_the_state_sharded():
    """T5 v1.1 XL shapes (d_model 2048, d_ff 5120, 32 heads, 32k vocab), 2 layers per
    stack, FSDP+TP on 64 devices with the paper's batch 64 and SVAMP's packed lengths."""
    config = aot.AotConfig(
        size="xl",
        num_layers=2,
        rules="fsdp_tp",
        num_partitions=4,
        num_devices=64,
        batch_size=64,
        encoder_length=512,
        decoder_length=384,
    )
    r = aot.compile_in_subprocess(config, timeout=900)
    assert r.replicated_large == []
    assert r.total_bytes < 16 * aot.GIB
    cfg = config.model_config()
    # embeddings + lm head dominate at 2 layers; their per-device share is 1/64 of them
    assert r.largest_entry_parameter[0] == cfg.vocab_size * cfg.d_model // 64
    assert math.isclose(r.alias_bytes, r.state_bytes_per_device)


def test_a_decoder_only_student_compiles_with_one_stream_per_row_and_its_state_sharded():
    """Llama 3.2 1B's shapes (gin/models/llama3_2_1b.gin) at 1 layer, FSDP on 8 devices:
    rows of encoder_length + decoder_length - 1 tokens, the 128k-id embedding sharded."""
    config = aot.AotConfig(
        size="llama3_2_1b",
        num_layers=1,
        rules="fsdp",
        num_devices=8,
        batch_size=8,
        encoder_length=64,
        decoder_length=33,
    )
    cfg = config.model_config()
    assert (cfg.num_layers, cfg.d_model, cfg.vocab_size, cfg.dtype) == (1, 2048, 128256, "bfloat16")
    r = aot.compile_in_subprocess(config, timeout=900)
    assert r.replicated_large == [] and math.isclose(r.alias_bytes, r.state_bytes_per_device)
    assert r.largest_entry_parameter[0] == cfg.vocab_size * cfg.d_model // 8  # the embedding, 1/8 per device
    assert r.num_params == cfg.vocab_size * cfg.d_model + 60_821_504 + cfg.d_model  # 1 layer and the final norm
    batch = aot.abstract_batch(config, None)
    assert {k: v.shape for k, v in batch.items()} == {k: (8, 96) for k in batch} and "decoder_causal_attention" in batch


@pytest.mark.parametrize(
    "gin_file, search_path, bindings, expected",
    [
        # T5X's own model file: it includes t5_1_1/base.gin from the T5X root, and its
        # %DROPOUT_RATE is T5X's required macro
        (
            "t5x/examples/t5/t5_1_1/tiny.gin",
            T5X_DATA / "gin",
            ("DROPOUT_RATE = 0.05",),
            dict(d_model=8, num_encoder_layers=2, vocab_size=32128, dropout_rate=0.05),
        ),
        ("models/decoder_only_tiny_cpu.gin", None, (), dict(d_model=64, num_layers=6, vocab_size=1024, dropout_rate=0)),
    ],
)
def test_any_model_gin_file_is_compiled_as_the_train_binary_reads_it(gin_file, search_path, bindings, expected):
    """Only the published sizes could be compiled: a user's own model file, or T5X's,
    could not be checked against a pod's memory before its launch."""
    config = aot.AotConfig(
        gin_file=gin_file,
        gin_search_paths=str(search_path or ""),
        gin_bindings=bindings,
        rules="fsdp",
        num_devices=4,
        batch_size=4,
        encoder_length=32,
        decoder_length=16,
        dtype="float32",
    )
    try:
        model = config.model_config()
    finally:
        gin.clear_config()
    assert {k: getattr(model, k) for k in expected} == expected and model.dtype == "float32"
    r = aot.compile_in_subprocess(config, timeout=600)
    params = interface.build(model).abstract_params()
    assert r.num_params == sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params))
    assert r.mesh_shape == {"data": 4, "model": 1} and r.total_bytes > 0
    assert r.summary().startswith(os.path.basename(gin_file))
    assert aot.cached_report("unused.json", config) is None  # the file may change: never cached


# The same small model compiled by the TPU compiler (libtpu, which make test installs
# beside the venv) for a 2x2 v5e topology: compile-only devices, no TPU needed.
TPU = dict(SMALL, rules="fsdp_tp", num_partitions=2, num_devices=4, batch_size=8, target="tpu:v5e:2x2")


@pytest.fixture(scope="module")
def tpu_v5e():
    return aot.compile_in_subprocess(aot.AotConfig(**TPU), timeout=900)


def test_the_tpu_compiler_compiles_the_train_step_for_a_v5e_topology(tpu_v5e):
    r = tpu_v5e
    assert r.fits and r.compiler.startswith("TPU compiler (v5e:2x2, TPU v5")
    assert r.mesh_shape == {"data": 2, "model": 2} and r.replicated_large == []
    # The state is donated; TPU layouts tile small arrays, so its buffers can be larger
    # than the shards' element counts say.
    assert r.alias_bytes >= r.state_bytes_per_device > 0
    assert r.argument_bytes >= r.alias_bytes and 0 < r.temp_bytes < 1 << 30
    assert "TPU compiler" in r.summary()
    # The TPU compiler's cost analysis of one chip's program (14 GFLOPs when measured:
    # 4 rows of 64 + 32 tokens through half of a 1-layer base, rematerialised).
    assert 5e9 < r.flops < 5e10 and r.bytes_accessed > r.argument_bytes


def test_two_processes_can_compile_for_tpu_at_once():
    # libtpu locks /tmp/libtpu_lockfile for the life of the process that loaded it. Compile-
    # only devices share no TPU, so a second compile must not be refused while one runs.
    v5e = "topology_name='v5e:2x2', platform='tpu'"
    load = f"from jax.experimental import topologies; topologies.get_topology_desc({v5e})"
    env = aot.accelerator_env("tpu:v5e:2x2")
    holder = subprocess.Popen(
        [sys.executable, "-c", f"{load}; print('loaded', flush=True); import time; time.sleep(120)"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "loaded"
        second = subprocess.run([sys.executable, "-c", load], env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr[-1000:]
    finally:
        holder.kill()
        holder.wait()


def test_a_tpu_target_without_libtpu_says_in_one_line_how_to_install_it(tmp_path):
    env = {**os.environ, "DSS_LIBTPU_DIR": str(tmp_path / "no_libtpu")}
    flags = ["--size=tiny", "--num_devices=4", "--batch_size=8", "--target=tpu:v5e:2x2"]
    r = subprocess.run(
        [sys.executable, "-m", "dss_jax.aot", *flags], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("aot: error: target='tpu:v5e:2x2': no TPU compiler"), r.stderr
    assert "`make compilers` installs libtpu, pinned by constraints/tpu.txt" in lines[0]


def test_a_target_is_cpu_a_tpu_topology_or_a_shipped_gpu_kind():
    forms = r"use 'cpu', 'tpu:<topology>' .* or 'gpu:<kind>:<hosts>x<gpus>'"
    with pytest.raises(ValueError, match=rf"target='cuda': {forms}"):
        aot.AotConfig(**SMALL, num_devices=64, target="cuda")
    kinds = r"GPU kinds with a target config are \['h100', 'h200'\]"
    with pytest.raises(ValueError, match=rf"target='gpu:a100:1x4': {kinds}"):
        aot.AotConfig(**SMALL, num_devices=4, target="gpu:a100:1x4")
    with pytest.raises(ValueError, match=r"give hosts x GPUs per host after the kind, e.g. 'gpu:h100:32x8'"):
        aot.AotConfig(**SMALL, num_devices=4, target="gpu:h100:4")
    assert "--target=tpu:v5e:2x2" in aot.AotConfig(**TPU).flags()


def test_a_program_that_does_not_fit_is_reported_with_the_compilers_numbers():
    # 512 rows of 2048+2048 tokens without rematerialisation: hundreds of GiB of
    # activations against v5e's 16 GiB of HBM. The TPU compiler refuses it; the report
    # says so instead of failing.
    big = dict(TPU, batch_size=512, encoder_length=2048, decoder_length=2048, remat_policy="none")
    r = aot.compile_in_subprocess(aot.AotConfig(**big), timeout=900)
    assert not r.fits and r.total_bytes == 0
    refusal = r"RESOURCE_EXHAUSTED: Ran out of memory on HBM.*exceeds available HBM \(15\.75G\)"
    assert re.match(refusal, r.compiler_message), r.compiler_message
    assert "does not fit: RESOURCE_EXHAUSTED" in r.summary()


# The same small model compiled by XLA's GPU compiler (JAX's CUDA plugin, which make test
# installs beside the venv) for compile-only GPUs described by the shipped target configs.
GPU = dict(TPU, target="gpu:h200:1x4")


def test_the_gpu_compiler_compiles_the_train_step_for_h200s():
    r = aot.compile_in_subprocess(aot.AotConfig(**GPU), timeout=900)
    assert r.fits and r.compiler == "XLA GPU compiler (h200 x 4, NVIDIA H200)", r.compiler
    assert r.mesh_shape == {"data": 2, "model": 2} and r.replicated_large == []
    assert r.alias_bytes == r.state_bytes_per_device > 0  # the donated state, untiled on GPU
    assert 0 < r.temp_bytes < 1 << 30 and "XLA GPU compiler" in r.summary()


def test_a_program_over_a_gpus_memory_is_reported_as_not_fitting():
    # The TPU refusal's program on four H100s: the GPU compiler compiles it anyway (its
    # rematerialisation gives up), so the fit is checked against the device's 79.65 GiB.
    big = dict(GPU, target="gpu:h100:1x4", batch_size=512, encoder_length=2048, decoder_length=2048)
    r = aot.compile_in_subprocess(aot.AotConfig(**dict(big, remat_policy="none")), timeout=900)
    assert not r.fits and r.temp_bytes > 80 * aot.GIB
    assert re.search(r"\d+\.\d\d GiB per device .* exceeds the h100's 79\.65 GiB$", r.compiler_message)
    assert "does not fit" in r.summary()


def test_the_gpu_fit_check_keeps_temporaries_under_xlas_scheduler_limit():
    memory = aot.gpu_device_memory("h100")
    assert memory == 81559 * 2**20
    limit = int((0.8 * memory - 10 * aot.GIB) * 0.95)  # gpu_hlo_schedule.cc, default slop factor
    args = dict(argument=10 * aot.GIB, output=0, alias=0, code=0)
    assert aot.gpu_fit("h100", temp=limit, **args) == (True, "")
    fits, why = aot.gpu_fit("h100", temp=limit + (1 << 20), **args)
    assert not fits and "exceed XLA's GPU scheduler limit of 51.03 GiB" in why
    assert aot.gpu_device_memory("h200") == 143771 * 2**20


def test_a_figure_is_extended_along_the_line_of_the_two_shallowest_compiles():
    # 3 GiB + 0.5 GiB per layer at 1 and 2 layers; the line is 10% above the 4-layer compile.
    points = {1: 3.5, 2: 4.0, 4: 5.0 / 1.1}
    line = aot.extend_to_depth(points, 24)
    assert line["value"] == pytest.approx(15.0) and line["fitted"] == [1, 2] and line["checked_at"] == 4
    assert line["check_error"] == pytest.approx(0.1) and line["errors"] == {4: pytest.approx(0.1)}
    # Through 2 and 4 instead: 3.5 + (5 / 1.1 - 4) / 2 per layer; the 1-layer compile checks it.
    deep = aot.extend_to_depth(points, 24, fitted=(4, 2))
    assert deep["fitted"] == [2, 4] and deep["value"] == pytest.approx(4.0 + 22 * (5.0 / 1.1 - 4.0) / 2)
    assert deep["checked_at"] == 1 and deep["errors"] == {1: pytest.approx((4.0 - (5.0 / 1.1 - 4.0) / 2) / 3.5 - 1)}
    with pytest.raises(ValueError, match=r"fitted=\(2, 8\) must be two of the compiled depths \[1, 2, 4\]"):
        aot.extend_to_depth(points, 24, fitted=(2, 8))
    assert aot.extend_to_depth({2: 4.0, 1: 3.5}, 24)["check_error"] is None  # nothing checks it
    assert aot.extend_to_depth({1: 0, 2: 0, 4: 0}, 24)["check_error"] == 0  # e.g. no generated code
    with pytest.raises(ValueError, match=r"two depths at least, got \[1\]"):
        aot.extend_to_depth({1: 3.5}, 24)


def test_a_cached_report_is_quoted_only_for_the_settings_it_was_compiled_with(tmp_path):
    config = aot.AotConfig(**TPU)
    report = aot.AotReport(config, 1, {"data": 2, "model": 2}, 1, 2, 2, 1, 3, 0, 0.1, 0.2, [1, "f32[1]"], [])
    path = str(tmp_path / "rows" / "base-1.json")
    assert aot.cached_report(path, config) is None  # nothing cached yet
    aot.write_report(path, report)
    assert aot.cached_report(path, config) == report
    assert aot.cached_report(path, aot.AotConfig(**dict(TPU, num_layers=2))) is None  # stale: compile again
    aot.write_report(str(tmp_path / "rows" / "base-12.json"), report)
    assert aot.cached_depths(str(tmp_path / "rows"), "base-") == [1, 12]
    assert aot.cached_depths(str(tmp_path / "none"), "base-") == []


@pytest.mark.parametrize(
    "flag, said",
    [
        (
            "--size=bse",
            "aot: error: --size=bse: choose one of tiny, small, base, large, xl, xxl, gemma3_270m, gemma3_1b, "
            "qwen3_0_6b, llama3_2_1b (did you mean base?)",
        ),
        ("--rules=fsdp-tp", "aot: error: --rules=fsdp-tp: choose one of dp, fsdp, tp, fsdp_tp (did you mean fsdp_tp?)"),
        ("--optimizer=sgd", "aot: error: --optimizer=sgd: choose one of adafactor, adamw"),
        ("--dtype=int8", "aot: error: --dtype=int8: choose one of float32, bfloat16, float16"),
        ("--num_layers=0", "aot: error: --num_layers=0: must be a positive integer"),
        ("--num_devices=x", "aot: error: argument --num_devices: invalid int value: 'x'"),
        ("--gin_file=models/tiny.gin --size=xl", "aot: error: --gin_file=models/tiny.gin sets the model: drop --size"),
        ("--gin_file=models/tiny_typo.gin", "aot: error: --gin_file=models/tiny_typo.gin: not found (looked in: ."),
        ("--gin_search_paths=gin", "aot: error: --gin_search_paths is where a --gin_file's includes are looked for"),
        ("--gin.DROPOUT_RATE=0.1", "aot: error: --gin.NAME bindings apply to a --gin_file: give the --gin_file"),
    ],
)
def test_a_flag_it_cannot_take_is_one_line_before_jax_starts(flag, said):
    """--size=bse was accepted and failed in T5Config.preset with a traceback; argparse's
    own errors printed its usage first."""
    proc = subprocess.run(
        [sys.executable, "-m", "dss_jax.aot", *flag.split()],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.startswith(said) and proc.stderr.count("\n") == 1, proc.stderr


def test_the_choices_written_out_agree_with_where_they_are_defined():
    from dss_jax import optimizers, partitioning
    from dss_jax.model import config

    assert aot.SIZES == config.SIZES and aot.VARIANTS == config.VARIANTS
    decoder_only_files = sorted(
        p.stem
        for p in (REPO_ROOT / "gin" / "models").glob("*.gin")
        if "model_config.family = 'decoder_only'" in p.read_text() and "tiny" not in p.stem
    )
    assert sorted(aot.DECODER_ONLY_MODELS) == decoder_only_files
    assert aot.REMAT_POLICIES == config.REMAT_POLICIES and aot.RULE_SETS == tuple(partitioning.RULE_SETS)
    assert optimizers.SETTINGS["name"]("sgd") and not any(optimizers.SETTINGS["name"](o) for o in aot.OPTIMIZERS)
