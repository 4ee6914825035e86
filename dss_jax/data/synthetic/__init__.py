"""The built-in dataset: synthetic arithmetic word problems with a cached, fallible teacher.

    problems.py   expression trees, `Problem`, the people, things and numbers a story
                  draws on (`Draw`), distractor sentences; imports nothing of the package
    templates.py  the 26 problem shapes and `generate_problem`, which draws one
    teacher.py    the scripted chain-of-thought teacher: right, slipping, wrong or
                  unparsable on configured fractions of the problems
    dataset.py    `SyntheticConfig` (gin: `synthetic_config.*`), the splits written as a
                  teacher cache, `ensure_dataset`, trivial baselines

Importing the package registers `synthetic_config` with gin (gin/tasks/synthetic.gin
does `import dss_jax.data.synthetic`); the dataset's API is re-exported here.
"""

from dss_jax.data.synthetic.dataset import (
    DATASET,
    GENERATOR_VERSION,
    PROMPT_ID,
    SPLITS,
    TEACHER,
    UNLABELED,
    SyntheticConfig,
    baselines,
    dataset_dir,
    describe,
    ensure_dataset,
    generate_problems,
    generate_records,
    rng_for,
    split_paths,
    synthetic_cache_dir,
    synthetic_config,
    write_dataset,
)

__all__ = [
    "DATASET",
    "GENERATOR_VERSION",
    "PROMPT_ID",
    "SPLITS",
    "TEACHER",
    "UNLABELED",
    "SyntheticConfig",
    "baselines",
    "dataset_dir",
    "describe",
    "ensure_dataset",
    "generate_problems",
    "generate_records",
    "rng_for",
    "split_paths",
    "synthetic_cache_dir",
    "synthetic_config",
    "write_dataset",
]
