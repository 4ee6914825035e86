"""The student-model seam: a config.json names its family (and one without a family is a
T5's), gin chooses the family, and everything that trains or decodes takes a StudentModel."""

import hashlib
import json
import pathlib
import platform

import jax
import jaxlib
import numpy as np
import pytest

import gin
from dss_jax import checkpoints, configurables, gin_utils, losses, optimizers
from dss_jax.model import decoding, interface
from dss_jax.model.config import T5Config
from dss_jax.model.encoder_decoder import EncoderDecoderModel
from dss_jax.model.t5 import T5
from dss_jax.training.step import Trainer

CONFIG = T5Config.preset("tiny", vocab_size=64, dropout_rate=0.0)


@pytest.fixture
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_a_config_json_names_its_family_and_reads_back():
    data = json.loads(CONFIG.to_json())
    assert data["family"] == "t5"
    assert interface.config_from_dict(data) == CONFIG
    assert isinstance(interface.build(CONFIG), EncoderDecoderModel)


def test_a_config_json_written_before_families_loads_as_t5(tmp_path):
    data = json.loads(CONFIG.to_json())
    del data["family"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    config, _ = checkpoints.read_config(tmp_path)
    assert config == CONFIG and interface.build(config).family == "t5"


def test_a_family_dss_jax_does_not_implement_is_refused_naming_file_and_family(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**json.loads(CONFIG.to_json()), "family": "mistral"}))
    with pytest.raises(checkpoints.CheckpointError) as e:
        checkpoints.read_config(tmp_path)
    message = str(e.value)
    assert len(message.splitlines()) == 1
    assert str(tmp_path / "config.json") in message and "family='mistral'" in message and "t5" in message


def test_gin_chooses_the_family(clean_gin, tmp_path):
    gin_utils.parse_gin(["models/tiny.gin"], ["model_config.family = 't5'"])
    assert configurables.build_model() == EncoderDecoderModel(T5Config.preset("tiny"))
    gin.clear_config()
    gin_utils.parse_gin(["models/tiny.gin"], ["model_config.family = 'gpt'"])
    with pytest.raises(
        configurables.ModelConfigError, match=r"^model_config.family='gpt' is not .*choose one of decoder_only, t5"
    ):
        configurables.model_config()
    # A checkpoint decides its family; a gin binding that says otherwise is refused.
    (tmp_path / "config.json").write_text(CONFIG.to_json())
    gin.clear_config()
    gin_utils.parse_gin(["models/decoder_only_tiny.gin"], [])
    with pytest.raises(configurables.ModelConfigError, match=r"family='decoder_only', but \S+config.json holds a 't5'"):
        configurables.model_config(checkpoint_path=str(tmp_path))


def test_trainer_and_generate_take_a_student_model_not_a_bare_network():
    kwargs = dict(loss_config=losses.LossConfig(), optimizer_config=optimizers.OptimizerConfig(), total_steps=2)
    with pytest.raises(TypeError, match="Trainer takes a StudentModel .*got T5"):
        Trainer(T5(CONFIG), **kwargs)
    with pytest.raises(TypeError, match=r"generate\(\) takes a StudentModel"):
        decoding.generate(T5(CONFIG), {}, np.ones((1, 3), np.int32), max_decode_length=2)


def test_a_families_param_shapes_and_root_keys_are_its_networks():
    model = interface.build(CONFIG)
    abstract = model.abstract_params()
    traced = {
        tuple(str(k.key) for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]
    }
    assert {p: shape for p, (shape, _) in model.param_shapes().items()} == traced
    assert set(abstract) == model.param_root_keys
    assert model.param_root_keys in interface.param_root_keys()
    # A model is a static jit argument: equal configs, equal and same-hash models.
    assert hash(model) == hash(interface.build(CONFIG.replace())) and model == interface.build(CONFIG.replace())


GOLDEN = pathlib.Path(__file__).with_name("t5_before_the_seam.json")


def _host() -> dict:
    flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":", 1)[1].split()
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "machine": platform.machine(),
        "cpu_flags_sha256": hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest(),
    }


def test_the_t5_path_is_what_it_was_before_the_seam(cpu_devices):
    """Train metrics over 6 steps (dropout; 1 and 2 microbatches), eval metrics, and greedy,
    beam and sampled tokens and scores, against the values recorded at 82dd234, before the
    model interface: bit for bit on the recording host's jax and CPU, to 1e-5 elsewhere
    (XLA:CPU's code differs between CPUs)."""
    from test_trainer import packed_batch

    from dss_jax import partitioning

    golden = json.loads(GOLDEN.read_text())
    exact = golden["host"] == _host()
    got = {}
    config = T5Config.preset("tiny", "t5.1.1", vocab_size=64, dropout_rate=0.1)
    for mb in (1, 2):
        trainer = Trainer(
            interface.build(config),
            loss_config=losses.LossConfig(rationale_weight=0.7),
            optimizer_config=optimizers.OptimizerConfig(name="adafactor"),
            total_steps=10,
            num_microbatches=mb,
            seed=3,
            mesh=partitioning.make_mesh(1, cpu_devices[:1]),
        )
        state, rng, steps = trainer.init_state(), np.random.default_rng(0), []
        for _ in range(6):
            state, metrics = trainer.train_step(state, trainer.global_batch(packed_batch(rng)))
            steps.append({k: float(v).hex() for k, v in sorted(metrics.items())})
        got[f"train_mb{mb}"] = steps
        evaluated = trainer.eval_step(state.params, trainer.global_batch(packed_batch(rng)))
        got[f"eval_mb{mb}"] = {k: float(v).hex() for k, v in sorted(evaluated.items())}
    params = jax.device_get(state.params)
    model = interface.build(config.replace(dropout_rate=0.0))
    inputs = np.random.default_rng(1).integers(2, 64, (4, 10)).astype(np.int32)
    inputs[:, -1], inputs[2, 6:], inputs[2, 5] = 1, 0, 1
    for name, settings in [
        ("greedy", {}),
        ("beam", dict(method="beam", num_beams=3, length_penalty=0.6)),
        ("sample", dict(method="sample", temperature=0.9, top_k=10, rng=jax.random.key(5))),
    ]:
        out = decoding.generate(model, params, inputs, max_decode_length=9, **settings)
        got[name] = {"tokens": np.asarray(out.tokens).tolist(), "scores": [float(s).hex() for s in out.scores]}

    def values(tree):
        leaves = jax.tree_util.tree_leaves(tree)
        return np.array([float.fromhex(x) if isinstance(x, str) else float(x) for x in leaves])

    for key in ("train_mb1", "eval_mb1", "train_mb2", "eval_mb2", "greedy", "beam", "sample"):
        assert jax.tree_util.tree_structure(got[key]) == jax.tree_util.tree_structure(golden[key]), key
        if exact:
            assert got[key] == golden[key], key
        else:
            np.testing.assert_allclose(values(got[key]), values(golden[key]), rtol=1e-5, atol=1e-6, err_msg=key)
