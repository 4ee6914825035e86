"""The partitioned train step: rule sets agree with one device, shard as they say,
accumulate exactly, and λ = 0 is standard finetuning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dss_jax import losses, optimizers, partitioning
from dss_jax.model.config import T5Config
from dss_jax.model.encoder_decoder import EncoderDecoderModel
from dss_jax.training import step as trainer_lib
from dss_jax.training.step import Trainer

VOCAB = 64


def tiny_config(**kw):
    return T5Config.preset("tiny", "t5.1.1", vocab_size=VOCAB, dropout_rate=0.0, **kw)


def packed_batch(rng, batch=8, enc_len=16, dec_len=12, with_rationale=True):
    """Rows of one label segment and (optionally) one rationale segment, then padding."""
    feats = {
        k: np.zeros((batch, n), np.int32)
        for k, n in [
            ("encoder_input_tokens", enc_len),
            ("encoder_segment_ids", enc_len),
            ("encoder_positions", enc_len),
            ("decoder_target_tokens", dec_len),
            ("decoder_input_tokens", dec_len),
            ("decoder_loss_weights", dec_len),
            ("decoder_segment_ids", dec_len),
            ("decoder_positions", dec_len),
            ("decoder_task_ids", dec_len),
        ]
    }
    for r in range(batch):
        e0, d0 = 0, 0
        segments = [(1, rng.integers(3, 7), rng.integers(2, 4))]
        if with_rationale:
            segments.append((2, rng.integers(3, 8), rng.integers(3, 7)))
        for seg, (task, elen, dlen) in enumerate(segments, start=1):
            feats["encoder_input_tokens"][r, e0 : e0 + elen] = rng.integers(2, VOCAB, elen)
            feats["encoder_input_tokens"][r, e0 + elen - 1] = 1
            feats["encoder_segment_ids"][r, e0 : e0 + elen] = seg
            feats["encoder_positions"][r, e0 : e0 + elen] = np.arange(elen)
            tgt = rng.integers(2, VOCAB, dlen)
            tgt[-1] = 1
            feats["decoder_target_tokens"][r, d0 : d0 + dlen] = tgt
            feats["decoder_input_tokens"][r, d0 : d0 + dlen] = np.concatenate([[0], tgt[:-1]])
            feats["decoder_loss_weights"][r, d0 : d0 + dlen] = 1
            feats["decoder_segment_ids"][r, d0 : d0 + dlen] = seg
            feats["decoder_positions"][r, d0 : d0 + dlen] = np.arange(dlen)
            feats["decoder_task_ids"][r, d0 : d0 + dlen] = task
            e0, d0 = e0 + elen, d0 + dlen
    return feats


def make_trainer(devices, rules="dp", num_partitions=1, microbatches=1, lam=1.0, opt="adafactor", config=None):
    mesh = partitioning.make_mesh(num_partitions, devices)
    return Trainer(
        EncoderDecoderModel(config or tiny_config()),
        loss_config=losses.LossConfig(rationale_weight=lam),
        optimizer_config=optimizers.OptimizerConfig(name=opt, learning_rate=1e-2 if opt == "adamw" else None),
        total_steps=10,
        partition_config=partitioning.PartitionConfig(rules=rules, num_partitions=num_partitions),
        num_microbatches=microbatches,
        seed=0,
        mesh=mesh,
    )


def run_steps(trainer, batches):
    state = trainer.init_state()
    losses_out = []
    for b in batches:
        state, m = trainer.train_step(state, trainer.global_batch(b))
        losses_out.append(float(m["loss"]))
    return state, np.array(losses_out)


@pytest.fixture(scope="module")
def batches():
    # One batch seen five times: the loss must go down, so a step that silently does
    # nothing cannot pass.
    return [packed_batch(np.random.default_rng(0))] * 5


@pytest.fixture(scope="module")
def single_device_run(batches, cpu_devices):
    state, trajectory = run_steps(make_trainer(cpu_devices[:1]), batches)
    return jax.device_get(state.params), trajectory


@pytest.mark.parametrize("rules,num_partitions", [("dp", 1), ("fsdp", 1), ("tp", 2), ("fsdp_tp", 2)])
def test_rule_sets_match_one_device(rules, num_partitions, batches, single_device_run, cpu_devices):
    trainer = make_trainer(cpu_devices, rules, num_partitions)
    state, trajectory = run_steps(trainer, batches)
    ref_params, ref_trajectory = single_device_run
    assert np.all(np.diff(ref_trajectory) < 0)
    np.testing.assert_allclose(trajectory, ref_trajectory, rtol=1e-5)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-6),
        jax.device_get(state.params),
        ref_params,
    )
    # The parameters really are laid out as the rules say.
    mesh = trainer.mesh
    specs = {
        jax.tree_util.keystr(p): tuple(x.sharding.spec)
        for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]
    }
    flat = " ".join(str(s) for s in specs.values())
    # The train start line tells how many parameters each device holds: what it really holds.
    leaves = jax.tree_util.tree_leaves(state.params)
    held = sum(x.addressable_shards[0].data.size for x in leaves)
    line = partitioning.describe_layout(mesh, rules, trainer.abstract_params, trainer.params_sharding)
    assert f"{sum(x.size for x in leaves):,} parameters, {held:,} per device" in line, line
    assert f"cpu ({len(cpu_devices)} x cpu" in line and f"rules {rules!r}" in line, line
    if rules == "dp":
        assert "data" not in flat and "model" not in flat
    if "fsdp" in rules:
        leaves = jax.tree_util.tree_leaves(state.params)
        sharded = [x for x in leaves if "data" in tuple(x.sharding.spec)]
        # Everything with a d_model axis is split; only the small relative-position
        # tables may stay whole.
        assert sum(x.size for x in sharded) >= 0.97 * sum(x.size for x in leaves)
        for x in sharded:
            assert x.addressable_shards[0].data.size * _devices_spanned(x, mesh) == x.size
        # optimiser state follows the parameters
        opt_sharded = [
            x
            for x in jax.tree_util.tree_leaves(state.opt_state)
            if hasattr(x, "sharding") and "data" in tuple(x.sharding.spec)
        ]
        assert opt_sharded
    if "tp" in rules:
        assert "model" in flat
        for x in jax.tree_util.tree_leaves(state.params):
            if "model" in tuple(x.sharding.spec):
                assert x.addressable_shards[0].data.size * _devices_spanned(x, mesh) == x.size


def _devices_spanned(x, mesh):
    axes = [a for entry in x.sharding.spec if entry for a in ((entry,) if isinstance(entry, str) else entry)]
    return int(np.prod([mesh.shape[a] for a in axes]))


def test_microbatches_accumulate_to_the_full_batch(batches, cpu_devices):
    whole_state, whole = run_steps(make_trainer(cpu_devices[:2], opt="adamw"), batches[:2])
    micro_state, micro = run_steps(make_trainer(cpu_devices[:2], microbatches=4, opt="adamw"), batches[:2])
    np.testing.assert_allclose(micro, whole, rtol=1e-5)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6),
        jax.device_get(micro_state.params),
        jax.device_get(whole_state.params),
    )


def test_lambda_zero_is_standard_finetuning(cpu_devices):
    """With λ = 0 the rationale segments change nothing: the same update as training on
    the label segments alone (packing keeps segments from seeing each other)."""
    rng = np.random.default_rng(1)
    with_r = packed_batch(rng, batch=4, with_rationale=True)
    without = {k: v.copy() for k, v in with_r.items()}
    drop = with_r["decoder_task_ids"] == 2
    enc_drop = with_r["encoder_segment_ids"] == 2
    for k in (
        "decoder_target_tokens",
        "decoder_input_tokens",
        "decoder_loss_weights",
        "decoder_segment_ids",
        "decoder_positions",
        "decoder_task_ids",
    ):
        without[k][drop] = 0
    for k in ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions"):
        without[k][enc_drop] = 0
    a_state, a_loss = run_steps(make_trainer(cpu_devices[:1], lam=0.0, opt="adamw"), [with_r])
    b_state, b_loss = run_steps(make_trainer(cpu_devices[:1], lam=1.0, opt="adamw"), [without])
    np.testing.assert_allclose(a_loss, b_loss, rtol=1e-6)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7),
        jax.device_get(a_state.params),
        jax.device_get(b_state.params),
    )
    # ...and with λ > 0 the rationale does change the update.
    c_state, _ = run_steps(make_trainer(cpu_devices[:1], lam=1.0, opt="adamw"), [with_r])
    diffs = jax.tree_util.tree_map(
        lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
        jax.device_get(c_state.params),
        jax.device_get(a_state.params),
    )
    assert max(jax.tree_util.tree_leaves(diffs)) > 1e-5


def test_non_finite_step_leaves_state_untouched(cpu_devices):
    trainer = make_trainer(cpu_devices[:1])
    state = trainer.init_state()
    before = jax.device_get(state.params)
    batch = packed_batch(np.random.default_rng(2), batch=2)
    # Corrupt one parameter so the loss is NaN.
    bad = jax.tree_util.tree_map(lambda x: x, state.params)
    leaves, treedef = jax.tree_util.tree_flatten(bad)
    leaves[0] = leaves[0] * jnp.nan
    bad_state = state.replace(params=jax.tree_util.tree_unflatten(treedef, leaves))
    bad_before = jax.device_get(bad_state.params)
    new_state, metrics = trainer.train_step(bad_state, trainer.global_batch(batch))
    assert bool(metrics["nonfinite"])
    assert int(new_state.step) == 0
    after = jax.device_get(new_state.params)
    np.testing.assert_array_equal(jax.tree_util.tree_leaves(after)[1], jax.tree_util.tree_leaves(bad_before)[1])
    del before


@pytest.fixture(scope="module")
def no_dropout_loss(batches, cpu_devices):
    return run_steps(make_trainer(cpu_devices[:1], opt="adamw"), batches[:1])[1]


@pytest.mark.parametrize("dropout_rng", ["unsafe_rbg", "xla_threefry"])
def test_dropout_rng_is_deterministic_per_step(dropout_rng, batches, cpu_devices, no_dropout_loss):
    # Resuming relies on the masks being a function of (seed, step): two runs, each with
    # its own Trainer as a restarted process would build, agree, and the masks are really
    # applied (the loss differs from the dropout-free run). The default (threefry) is
    # covered by the binary's SIGKILL-and-restart test.
    def run():
        trainer = Trainer(
            EncoderDecoderModel(T5Config.preset("tiny", "t5.1.1", vocab_size=VOCAB, dropout_rate=0.3)),
            loss_config=losses.LossConfig(),
            optimizer_config=optimizers.OptimizerConfig(name="adamw", learning_rate=1e-2),
            total_steps=10,
            mesh=partitioning.make_mesh(1, cpu_devices[:1]),
            dropout_rng=dropout_rng,
        )
        return run_steps(trainer, batches[:2])

    (state_a, loss_a), (state_b, loss_b) = run(), run()
    np.testing.assert_array_equal(loss_a, loss_b)
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, jax.device_get(state_a.params), jax.device_get(state_b.params)
    )
    assert abs(loss_a[0] - no_dropout_loss[0]) > 1e-4


def test_xla_threefry_masks_drop_at_the_rate_and_differ_by_key():
    key = trainer_lib.dropout_key(3, "xla_threefry")
    # The point of the choice: the masks come from XLA's generator with its ThreeFry algorithm.
    hlo = jax.jit(lambda k: jax.random.bernoulli(k, 0.9, (8,))).lower(key).as_text()
    assert "rng_bit_generator" in hlo and "THREE_FRY" in hlo
    keep = np.asarray(jax.random.bernoulli(key, 0.9, (1_000_000,)))
    assert abs(keep.mean() - 0.9) < 2e-3  # 5 standard deviations
    again = np.asarray(jax.random.bernoulli(key, 0.9, (1_000_000,)))
    other = np.asarray(jax.random.bernoulli(jax.random.fold_in(key, 1), 0.9, (1_000_000,)))
    np.testing.assert_array_equal(keep, again)
    # Independent masks disagree on 2 * 0.9 * 0.1 = 18% of the positions.
    assert abs((keep != other).mean() - 0.18) < 3e-3


def test_unknown_dropout_rng_is_rejected(cpu_devices):
    with pytest.raises(ValueError, match="dropout_rng must be one of"):
        Trainer(
            EncoderDecoderModel(tiny_config()),
            loss_config=losses.LossConfig(),
            optimizer_config=optimizers.OptimizerConfig(),
            total_steps=1,
            mesh=partitioning.make_mesh(1, cpu_devices[:1]),
            dropout_rng="philox",
        )
