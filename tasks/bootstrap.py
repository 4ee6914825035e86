"""Round 2 of bootstrapped self-training on the synthetic task: importing this registers

    dss_synthetic_bootstrap   train: dss_synthetic's labeled train cache + the student's cache
                              validation, test: dss_synthetic's

The student's cache is what `python -m dss_jax.annotate --backend=student
--task=dss_synthetic --split=unlabeled` wrote with the round-1 student; bind its path as
`bootstrap_student_cache.path` (gin). With `task_options.label_source =
'gt_else_teacher'` the labeled problems keep their gold labels (and the scripted teacher's
rationales) and the unlabeled ones take the student's label and rationale. The synthetic
settings (`synthetic_config.*`) are dss_synthetic's, so both rounds see the same labeled
data. Recipe: docs/bootstrap.md, gin/recipes/bootstrap_round{1,2}.gin.

To bootstrap your own dataset, register the same shape in a module of your own:
`register_cache_task(name, train_cache=[labeled_train, student_cache], ...)`.
"""

import functools
import os
from typing import Optional

import gin
from dss_jax.data.tasks import register_cache_task
from tasks import synthetic as synthetic_task

TASK_NAME = "dss_synthetic_bootstrap"


@gin.configurable
def bootstrap_student_cache(path: Optional[str] = None) -> str:
    """The student-annotated cache of round 1 (gin: `bootstrap_student_cache.path`)."""
    if not path:
        raise ValueError(
            f"{TASK_NAME} needs the round-1 student's cache: bind bootstrap_student_cache.path = "
            "'<the --output of python -m dss_jax.annotate --backend=student>' (gin)"
        )
    return os.path.expanduser(path)


register_cache_task(
    TASK_NAME,
    train_cache=[functools.partial(synthetic_task.cache_path, "train"), bootstrap_student_cache],
    validation_cache=functools.partial(synthetic_task.cache_path, "validation"),
    test_cache=functools.partial(synthetic_task.cache_path, "test"),
    family="svamp",
)
