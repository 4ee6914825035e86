#!/usr/bin/env python3
r"""Runs a dss_jax binary as several local processes over loopback (JAX's distributed runtime).

    python launch/local.py --num_processes=2 --devices_per_process=4 --log_dir=/tmp/logs -- \
        -m dss_jax.train --gin_file=runs/train.gin ... --gin.MODEL_DIR="'/tmp/run'"

Everything after `--` is passed to the Python interpreter of every process, followed by
`--multiprocess_gpu --coordinator_address=127.0.0.1:PORT --process_count=N --process_index=I`,
with JAX_COORDINATOR_BIND_ADDRESS=127.0.0.1:PORT: process 0's coordinator listens on
loopback only (JAX's default is every interface), whichever way the command starts JAX.
On CPU each process gets `devices_per_process` virtual devices; on a multi-GPU machine
pass --gpus_per_process to give each process its own GPUs (CUDA_VISIBLE_DEVICES; taken from
the launcher's own CUDA_VISIBLE_DEVICES list when that is set), e.g. 8 GPUs as 8 processes:

    python launch/local.py --num_processes=8 --gpus_per_process=1 -- -m dss_jax.train ...

--dry_run prints each process's environment and command instead of starting them.
Logs go to LOG_DIR/process_I.log; process 0's output is also shown on the terminal as
it comes (progress, evaluations, errors). If any process fails, the others are stopped,
the failed process's last lines are shown and the exit code is the first failure's.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _visible_gpus(wanted: int) -> list[str]:
    """The GPU ids processes may use: CUDA_VISIBLE_DEVICES's list when it is set (so a
    launcher restricted to some GPUs stays within them), else 0..wanted-1."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [g.strip() for g in listed.split(",") if g.strip()]
    return [str(g) for g in range(wanted)]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: launch/local.py [options] -- -m dss_jax.train [binary flags]", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=4, help="virtual CPU devices per process")
    parser.add_argument("--gpus_per_process", type=int, default=0, help="GPUs per process (0: CPU run)")
    parser.add_argument("--log_dir", default="launch_logs")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: pick a free one)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before all processes are stopped")
    parser.add_argument("--dry_run", action="store_true", help="print each process's environment and command")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    if not command:
        parser.error("nothing to run after `--` (e.g. -- -m dss_jax.train --gin_file=...)")
    if args.num_processes < 1:
        parser.error(f"--num_processes must be at least 1, got {args.num_processes}")
    if args.gpus_per_process < 0 or args.devices_per_process < 1:
        parser.error("--gpus_per_process must be >= 0 and --devices_per_process >= 1")
    gpus = _visible_gpus(args.num_processes * args.gpus_per_process)
    if args.gpus_per_process and len(gpus) < args.num_processes * args.gpus_per_process:
        parser.error(
            f"{args.num_processes} processes x {args.gpus_per_process} GPUs need "
            f"{args.num_processes * args.gpus_per_process} GPUs but CUDA_VISIBLE_DEVICES lists {len(gpus)}"
        )

    address = f"127.0.0.1:{args.port or free_port()}"
    plan = []
    for i in range(args.num_processes):
        env = {}
        if args.gpus_per_process:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[i * args.gpus_per_process : (i + 1) * args.gpus_per_process])
        else:
            env["JAX_PLATFORMS"] = "cpu"
            flags = [
                f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f
            ]
            flags.append(f"--xla_force_host_platform_device_count={args.devices_per_process}")
            env["XLA_FLAGS"] = " ".join(flags)
        env["JAX_COORDINATOR_BIND_ADDRESS"] = address  # what `127.0.0.1` above means: this machine only
        cmd = [
            sys.executable,
            *command,
            "--multiprocess_gpu",
            f"--coordinator_address={address}",
            f"--process_count={args.num_processes}",
            f"--process_index={i}",
        ]
        plan.append((env, cmd))
    if args.dry_run:
        for env, cmd in plan:
            print(" ".join([f"{k}={shlex.quote(v)}" for k, v in env.items()] + [shlex.quote(c) for c in cmd]))
        return 0

    os.makedirs(args.log_dir, exist_ok=True)
    procs, logs, tees = [], [], []
    for i, (env, cmd) in enumerate(plan):
        log = open(os.path.join(args.log_dir, f"process_{i}.log"), "w")
        logs.append(log)
        out = subprocess.PIPE if i == 0 else log
        procs.append(subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT))
        if i == 0:
            tees.append(threading.Thread(target=_tee, args=(procs[0].stdout, log), daemon=True))
            tees[-1].start()
    deadline = None if args.timeout is None else time.time() + args.timeout
    code = 0
    try:
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed or (deadline and time.time() > deadline):
                code = failed[0].returncode if failed else 124
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
                break
            time.sleep(0.2)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if code == 0:
            code = next((p.returncode for p in procs if p.returncode), 0)
    finally:
        for tee in tees:
            tee.join(timeout=10)
        for log in logs:
            log.close()
    if code:
        failed = next((i for i, p in enumerate(procs) if p.returncode == code), 0)
        if failed != 0:  # process 0's lines were already shown
            path = os.path.join(args.log_dir, f"process_{failed}.log")
            with open(path, errors="replace") as f:
                tail = f.readlines()[-15:]
            print(f"--- last lines of {path}:\n" + "".join(tail), file=sys.stderr, end="")
        print(f"a process failed (exit {code}); logs in {args.log_dir}/process_*.log", file=sys.stderr)
    return code


def _tee(stream, log) -> None:
    """Copies process 0's output to its log file and to the terminal, line by line."""
    for line in iter(stream.readline, b""):
        log.write(line.decode(errors="replace"))
        log.flush()
        sys.stdout.write(line.decode(errors="replace"))
        sys.stdout.flush()
    stream.close()


if __name__ == "__main__":
    sys.exit(main())
