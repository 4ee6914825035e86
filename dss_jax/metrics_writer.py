"""Where training and evaluation numbers go: TensorBoard, `metrics.jsonl`, a progress line.

Only process 0 writes; every process computes the same (replicated) scalars.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Mapping, Optional

import jax


class MetricsWriter:
    def __init__(self, log_dir: str, *, jsonl_name: str = "metrics.jsonl", tensorboard: bool = True):
        self.log_dir = log_dir
        self.enabled = jax.process_index() == 0
        self._tb = None
        if self.enabled:
            os.makedirs(log_dir, exist_ok=True)
            self._jsonl = open(os.path.join(log_dir, jsonl_name), "a", encoding="utf-8")
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(log_dir)

    def write(self, step: int, scalars: Mapping[str, float], prefix: str = "") -> None:
        if not self.enabled:
            return
        clean = {f"{prefix}{k}": float(v) for k, v in scalars.items()}
        record = {"step": int(step), **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, int(step))
            self._tb.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


class Progress:
    """One line per report: step, loss, tokens/s, ETA (stderr, process 0 only)."""

    def __init__(self, total_steps: int, start_step: int, stream=None):
        self.total = total_steps
        self.start_step = start_step
        self.t0 = time.time()
        self.stream = stream or sys.stderr
        self.enabled = jax.process_index() == 0

    def eta_seconds(self, step: int) -> Optional[float]:
        done = step - self.start_step
        if done <= 0:
            return None
        return (time.time() - self.t0) / done * (self.total - step)

    def report(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        eta = self.eta_seconds(step)
        parts = [f"step {step}/{self.total}"]
        for key, fmt in (("loss", "loss {:.4f}"), ("label/loss", "label {:.4f}"), ("rationale/loss", "rationale {:.4f}"),
                         ("label/accuracy", "label_acc {:.3f}"), ("real_tokens_per_second", "{:.0f} tok/s")):
            if key in scalars:
                parts.append(fmt.format(scalars[key]))
        if eta is not None:
            parts.append(f"ETA {_hms(eta)}")
        print(" | ".join(parts), file=self.stream, flush=True)


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
