"""The built-in synthetic task: importing this module registers

    dss_synthetic   arithmetic word problems with a scripted chain-of-thought teacher

(dss_jax/data/synthetic.py), judged like SVAMP (equations by value). Its cache files are
generated on first use into `synthetic_cache_dir.directory` (default: the cache dir of
`data_locations`, $DSS_CACHE_DIR or ~/.cache/dss_jax), under a name that hashes the
settings, which gin binds as `synthetic_config.<setting>` (optionally scoped:
`dss_synthetic/synthetic_config.max_operations = 2`). Splits: train, validation, test
(each generated, none carved out), and `unlabeled` (problems with neither label nor
teacher sample, for self-training; readable when `synthetic_config.unlabeled_size` > 0).
Options: `task_options`; vocabulary: `task_vocabulary` (by default trained on the train
cache); feature lengths: gin/tasks/synthetic.gin. It also registers the domain's
pretraining tasks over a generated corpus: `dss_synthetic_pretrain` (T5 span corruption)
and `dss_synthetic_pretrain_causal` (causal LM, for decoder-only students).
"""

import functools

import gin
from dss_jax.data import pretrain, synthetic
from dss_jax.data.lazy_vocab import LazyVocabulary
from dss_jax.data.tasks import register_cache_task

TASK_NAME = "dss_synthetic"


def cache_path(split: str) -> str:
    """The split's cache file under the gin-bound settings, generated when missing."""
    with gin.config_scope(TASK_NAME):
        config = synthetic.synthetic_config()
        if split not in config.splits:
            raise ValueError(
                f"{TASK_NAME} has no {split!r} pool with these settings: bind "
                f"synthetic_config.{split}_size = N (gin) to generate one"
            )
        return str(synthetic.ensure_dataset(config)[split])


register_cache_task(
    TASK_NAME,
    train_cache=functools.partial(cache_path, "train"),
    validation_cache=functools.partial(cache_path, "validation"),
    test_cache=functools.partial(cache_path, "test"),
    extra_splits={synthetic.UNLABELED: functools.partial(cache_path, synthetic.UNLABELED)},
    family="svamp",
)


# Span-corruption pretraining on the domain's generated corpus (dss_jax/data/pretrain.py),
# for a student that has read the domain before it sees the task (gin/runs/pretrain.gin).
PRETRAIN_TASK_NAME = "dss_synthetic_pretrain"


def _corpus() -> list[str]:
    with gin.config_scope(TASK_NAME):  # leave out the problems dss_synthetic evaluates on
        return [str(pretrain.write_synthetic_corpus(exclude_config=synthetic.synthetic_config())[0])]


pretrain.register_span_corruption_task(
    PRETRAIN_TASK_NAME,
    text_files=_corpus,
    vocabulary=LazyVocabulary(
        lambda: pretrain.corpus_vocabulary(_corpus()[0]), name=f"{PRETRAIN_TASK_NAME} vocabulary"
    ),
    inputs_length=128,
    targets_length=32,
)

# Causal LM pretraining on the same corpus and vocabulary, for decoder-only students.
CAUSAL_PRETRAIN_TASK_NAME = "dss_synthetic_pretrain_causal"

pretrain.register_causal_lm_task(
    CAUSAL_PRETRAIN_TASK_NAME,
    text_files=_corpus,
    vocabulary=LazyVocabulary(
        lambda: pretrain.corpus_vocabulary(_corpus()[0]),
        name=f"{CAUSAL_PRETRAIN_TASK_NAME} vocabulary",
    ),
    length=256,
)
