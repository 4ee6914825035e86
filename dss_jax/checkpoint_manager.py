"""Checkpoints of a training run (orbax): the whole train state plus where the input was.

`MODEL_DIR/checkpoint_<step>/` holds the train state (step, float32 params, optimiser
state) and a small JSON item with the input position (global batches consumed) and
the model config, so a resumed run continues exactly where it stopped and the eval
binary can rebuild the model from the directory alone. Saves are asynchronous; every
process calls save and orbax coordinates them.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import orbax.checkpoint as ocp

STEP_PREFIX = "checkpoint"


class RunCheckpointer:
    def __init__(self, model_dir: str, *, keep: Optional[int] = None, save_period: int = 1000, asynchronous: bool = True):
        self.directory = os.path.abspath(model_dir)
        self.save_period = save_period
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            step_prefix=STEP_PREFIX,
            enable_async_checkpointing=asynchronous,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, metadata: dict) -> None:
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata)),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores the full state into the shardings of `abstract_state`."""
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), metadata=ocp.args.JsonRestore()
            ),
        )
        return out["state"], dict(out["metadata"] or {})

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def checkpoint_steps(model_dir: str) -> list[int]:
    """Steps with a finished checkpoint in a run directory (no manager needed)."""
    if not os.path.isdir(model_dir):
        return []
    steps = []
    for name in os.listdir(model_dir):
        if name.startswith(STEP_PREFIX + "_") and name[len(STEP_PREFIX) + 1 :].isdigit():
            if os.path.isdir(os.path.join(model_dir, name, "state")):
                steps.append(int(name[len(STEP_PREFIX) + 1 :]))
    return sorted(steps)


def step_dir(model_dir: str, step: int) -> str:
    return os.path.join(model_dir, f"{STEP_PREFIX}_{step}")


def read_metadata(checkpoint_dir: str) -> dict:
    """The JSON item a run checkpoint was saved with (input position, model config)."""
    path = os.path.join(checkpoint_dir, "metadata", "metadata")
    if not os.path.exists(path):
        logging.warning("%s has no metadata item", checkpoint_dir)
        return {}
    with open(path) as f:
        return json.load(f)
