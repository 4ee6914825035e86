"""A toy DSS task and a tiny student trained on it, shared by the eval and infer tests.

The label is "yes" when the input names red, else "no"; a few test records have a gold
label ("maybe") the student never saw, so accuracy lands strictly between 0 and 1. The
teacher's label is wrong on some records, so teacher agreement differs from accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from dss_jax.data.cache import CacheRecord, CacheWriter, TeacherSample

TASK = "toy_eval_yesno"
LENGTHS = {"label_inputs": 24, "label_targets": 6, "rationale_inputs": 24, "rationale_targets": 12}
COLORS = ["red", "blue", "green", "red", "yellow", "red", "black"]
NOUNS = ["apple", "car", "hat", "door", "cup", "ball"]
MODEL_VOCAB = 64


def _record(i: int, split: str, teacher_wrong: bool = False, gold: str | None = None) -> CacheRecord:
    color, noun = COLORS[i % len(COLORS)], NOUNS[(i // 3) % len(NOUNS)]
    label = "yes" if color == "red" else "no"
    teacher = ("no" if label == "yes" else "yes") if teacher_wrong else label
    sample = TeacherSample(rationale=f"the {noun} is {color}", label=teacher)
    samples = (sample,) if i % 5 != 4 else ()  # some records have no teacher output
    return CacheRecord(id=f"{split}/{i}", input=f"what about a {color} {noun}?", label=gold or label, samples=samples)


def write_caches(directory: pathlib.Path) -> dict[str, pathlib.Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"train": directory / "train.jsonl", "test": directory / "test.jsonl"}
    with CacheWriter(paths["train"], fsync=False) as w:
        w.write_all(_record(i, "train") for i in range(42))
    test = [_record(i, "test", teacher_wrong=i % 4 == 1, gold="maybe" if i in (3, 7) else None) for i in range(11)]
    with CacheWriter(paths["test"], fsync=False) as w:
        w.write_all(test)
    return paths


def train_vocab(caches: dict[str, pathlib.Path], directory: pathlib.Path) -> pathlib.Path:
    from dss_jax.data import vocab

    texts = vocab.cache_texts([caches["train"], caches["test"]]) + ["predict: explain: maybe"]
    return vocab.train_vocabulary(
        texts, directory / "spiece.model", vocab.VocabSettings(vocab_size=60, byte_fallback=False)
    )


def register(caches: dict[str, pathlib.Path], vocabulary=None):
    from dss_jax.data.tasks import register_cache_task

    return register_cache_task(
        TASK, train_cache=caches["train"], test_cache=caches["test"], vocabulary=vocabulary, family="cqa"
    )


TASK_MODULE = '''"""Registers the toy eval task for a subprocess (written by tests/_eval_toy.py)."""
from dss_jax.data.tasks import register_cache_task

register_cache_task({task!r}, train_cache={train!r}, test_cache={test!r}, family="cqa")
'''


def write_task_module(caches: dict[str, pathlib.Path], directory: pathlib.Path) -> pathlib.Path:
    """A module that registers the task with the default (gin-chosen) vocabulary."""
    path = directory / "toy_eval_task.py"
    path.write_text(TASK_MODULE.format(task=TASK, train=str(caches["train"]), test=str(caches["test"])))
    return path


def write_task_gin(directory: pathlib.Path) -> pathlib.Path:
    path = directory / "toy_task.gin"
    path.write_text(
        f"import toy_eval_task\nMIXTURE_OR_TASK_NAME = {TASK!r}\nTASK_FEATURE_LENGTHS = {json.dumps(LENGTHS)}\n"
    )
    return path


@dataclasses.dataclass
class TrainedToy:
    model: object
    config: object
    params_by_step: dict  # step -> host params
    run_dir: pathlib.Path


def train_student(task, devices, run_dir: pathlib.Path, spm: pathlib.Path, steps=(15, 60), seed=0) -> TrainedToy:
    """Trains the tiny student on the task's train split and checkpoints it at `steps` in a
    training run's layout: run_dir/{config.json, spiece.model, checkpoint_<step>/}."""
    import jax

    from dss_jax import losses, optimizers, partitioning
    from dss_jax.checkpoints import RunCheckpointer
    from dss_jax.data.feature_converter import convert_numpy
    from dss_jax.model.config import T5Config
    from dss_jax.model.encoder_decoder import EncoderDecoderModel
    from dss_jax.training.step import Trainer

    config = T5Config.preset("tiny", "t5.1.1", vocab_size=MODEL_VOCAB, dropout_rate=0.0)
    model = EncoderDecoderModel(config)
    trainer = Trainer(
        model,
        loss_config=losses.LossConfig(rationale_weight=0.5),
        optimizer_config=optimizers.OptimizerConfig(name="adamw", learning_rate=1e-2),
        total_steps=max(steps),
        partition_config=partitioning.PartitionConfig(rules="dp", num_partitions=1),
        seed=seed,
        mesh=partitioning.make_mesh(1, devices[:1]),
    )
    examples = list(task.get_dataset(LENGTHS, split="train", shuffle=False, use_cached=False).as_numpy_iterator())
    rows = convert_numpy(examples, LENGTHS, pack=True)
    n = rows["encoder_input_tokens"].shape[0]
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(config.to_json())  # as the trainer writes it
    (run_dir / "spiece.model").write_bytes(spm.read_bytes())
    ckpt = RunCheckpointer(str(run_dir), asynchronous=False)
    state = trainer.init_state()
    saved = {}
    for step in range(1, max(steps) + 1):
        idx = rng.choice(n, size=8, replace=n < 8)
        state, _ = trainer.train_step(state, trainer.global_batch({k: v[idx] for k, v in rows.items()}))
        if step in steps:
            saved[step] = jax.tree_util.tree_map(np.asarray, jax.device_get(state.params))
            ckpt.save(step, state, {"step": step, "input_position": step})
    ckpt.close()
    return TrainedToy(model=model, config=config, params_by_step=saved, run_dir=run_dir)


@dataclasses.dataclass
class ToyEnv:
    caches: dict
    spm: pathlib.Path
    vocabulary: object
    task: object
    trained: TrainedToy
    params_dir: pathlib.Path  # a checkpoints.save_params dir of the last step's params
    root: pathlib.Path


_ENV: list[ToyEnv] = []


def toy_env(tmp_path_factory, devices) -> ToyEnv:
    """The task, its vocabulary and the trained student; built once per test session."""
    if _ENV:
        register(_ENV[0].caches, _ENV[0].vocabulary)  # another test may have replaced the task
        return _ENV[0]
    import seqio

    from dss_jax.checkpoints import save_params

    root = tmp_path_factory.mktemp("eval_toy")
    caches = write_caches(root / "caches")
    spm = train_vocab(caches, root)
    vocabulary = seqio.SentencePieceVocabulary(str(spm))
    task = register(caches, vocabulary)
    trained = train_student(task, devices, root / "run", spm)
    last = max(trained.params_by_step)
    params_dir = save_params(root / "exported", trained.params_by_step[last], trained.config, vocab_path=spm)
    _ENV.append(ToyEnv(caches, spm, vocabulary, task, trained, params_dir, root))
    return _ENV[0]
