"""Checkpoints: how one is found, written and loaded, in one package.

    locate.py   the file names; a run's checkpoint_<step>/ dirs; select_checkpoints; the
                config.json and spiece.model that describe a checkpoint (read_config)
    params.py   save_params / load_params (the T5 params, checked against config.json
                before any weight is read); load_checkpoint (a model ready to run, ours
                or a Hugging Face T5 directory imported on the fly)
    integrity.py  the checksums saved with every checkpoint and checked on every load
    run.py      a training run's directory: RunCheckpointer (the whole train state and
                the input position, orbax), RunLock, the run's config.json, spiece.model,
                task.json and config.gin (write_run_files, run_task)
    outputs.py  writing a directory without losing anything (staged_output_dir)
    t5x.py      reading the msgpack checkpoints T5X writes (inline and out-of-line arrays),
                without t5x; not yet mapped onto a student

Every binary that takes a checkpoint (eval, infer, annotate, export, INITIAL_CHECKPOINT_PATH
in training) resolves it with `select_checkpoints` and reads it with `load_params`, so a
MODEL_DIR, one of its steps, a converted T5 or a `save_params` dir work the same
everywhere, and a damaged one (a checksum that differs, NaN or infinity) is refused
everywhere. One config.json describes a checkpoint: in a `save_params` / convert dir, or
once in a run's MODEL_DIR for all its steps; it, spiece.model and task.json are read
from there only (`describing_dir`), never from a directory further up.

    from dss_jax import checkpoints
    ((step, path),) = checkpoints.select_checkpoints(model_dir, "latest")
    model, params, vocab_path = checkpoints.load_checkpoint(path)
"""

from dss_jax.checkpoints.integrity import DamagedCheckpointError
from dss_jax.checkpoints.locate import (
    CHECKSUMS_FILE,
    CONFIG_FILE,
    PARAMS_ITEM,
    RUN_TASK_FILE,
    STEP_PREFIX,
    TOKENIZER_JSON,
    VOCAB_FILE,
    CheckpointError,
    CheckpointNotFoundError,
    checkpoint_steps,
    describing_dir,
    find_config,
    find_vocabulary,
    read_config,
    select_checkpoints,
    step_dir,
    where_described,
)
from dss_jax.checkpoints.outputs import OutputDirError, check_output_dir, staged_output_dir
from dss_jax.checkpoints.params import (
    SAVE_PARAMS_FILES,
    TOKENIZER_FILES,
    is_hf_checkpoint,
    load_checkpoint,
    load_params,
    save_params,
)
from dss_jax.checkpoints.run import (
    LOCK_NAME,
    CheckpointWriteError,
    RunCheckpointer,
    RunLock,
    RunLockedError,
    run_task,
    write_run_files,
    write_run_task,
)

__all__ = [
    "CHECKSUMS_FILE",
    "CONFIG_FILE",
    "LOCK_NAME",
    "PARAMS_ITEM",
    "RUN_TASK_FILE",
    "SAVE_PARAMS_FILES",
    "TOKENIZER_FILES",
    "TOKENIZER_JSON",
    "STEP_PREFIX",
    "VOCAB_FILE",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointWriteError",
    "DamagedCheckpointError",
    "OutputDirError",
    "RunCheckpointer",
    "RunLock",
    "RunLockedError",
    "check_output_dir",
    "checkpoint_steps",
    "describing_dir",
    "find_config",
    "find_vocabulary",
    "is_hf_checkpoint",
    "load_checkpoint",
    "load_params",
    "read_config",
    "run_task",
    "save_params",
    "select_checkpoints",
    "staged_output_dir",
    "step_dir",
    "where_described",
    "write_run_files",
    "write_run_task",
]
