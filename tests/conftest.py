"""Test set-up shared by the whole suite.

JAX reads XLA_FLAGS once, when it is first imported, so the virtual CPU devices that
mesh tests use are requested here, before any test module imports jax.
"""

import atexit
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow (under seqio) must not grab the accelerator or all host threads.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# One compilation cache for the session, this process and the binaries the tests start:
# the same tiny programs are compiled once, not once per subprocess (and never into the
# user's ~/.cache/dss_jax/xla).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dss_test_xla_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# The built-in synthetic task made small, for tests that run the train binary (or a sweep).
SMALL_SYNTHETIC_GIN = """
synthetic_config.train_size = 200
synthetic_config.validation_size = 20
synthetic_config.test_size = 20
T5Config.vocab_size = 1024
TASK_FEATURE_LENGTHS = {'label_inputs': 96, 'label_targets': 24, 'rationale_inputs': 96, 'rationale_targets': 64}
DssFeatureConverter.pack_encoder_length = 192
DssFeatureConverter.pack_decoder_length = 96
"""
SHARED_DATA = pathlib.Path(os.environ.get("DSS_PALM_DIR", REPO_ROOT.parent / "shared" / "data" / "dss_palm"))
# Files written by T5X itself (checkpoints, gin files), read without t5x; see its README.md.
T5X_DATA = REPO_ROOT.parent / "shared" / "data" / "t5x_testdata"


def run_binary(module: str, *args, timeout: float = 600, check: bool = False, **env):
    """`python -m MODULE ARGS` from the repository root, as a user runs a binary, with the
    suite's environment (JAX on CPU, quiet TensorFlow, this checkout importable) changed by
    `env` (NAME=value; None removes NAME). Returns the CompletedProcess (text output);
    `check=True` asserts a zero exit and shows the end of stderr otherwise."""
    environ = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    for name, value in env.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = str(value)
    proc = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=REPO_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, f"{module} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc


def write_parity_task_files(directory: pathlib.Path, num_records: int) -> tuple[pathlib.Path, pathlib.Path]:
    """(train cache, SentencePiece model) of a toy task: "Is <i> even?" -> yes/no, with a
    one-line rationale per record; register it with `dss_tasks.register_cache_task`."""
    from dss_jax.data import vocab
    from dss_jax.data.cache import CacheRecord, CacheWriter, TeacherSample

    train = directory / "train.jsonl"
    with CacheWriter(train) as w:
        for i in range(num_records):
            answer = ["yes", "no"][i % 2]
            w.write(
                CacheRecord(
                    id=f"t{i}",
                    input=f"Is {i} even?",
                    label=answer,
                    samples=(TeacherSample(f"{i} mod 2 is {i % 2}.", answer),),
                )
            )
    spm = vocab.train_vocabulary(
        [f"predict: explain: Is {i} even? yes no mod is" for i in range(50)],
        directory / "v.model",
        vocab.VocabSettings(vocab_size=400),
    )
    return train, spm


@pytest.fixture(scope="session")
def dss_palm_dir():
    """The paper's released files (read-only, never copied into the repo)."""
    if not (SHARED_DATA / "svamp").is_dir():
        pytest.skip(f"paper data not found at {SHARED_DATA} (set DSS_PALM_DIR)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cpu_devices():
    """The 8 virtual CPU devices; tests that build a Mesh take what they need from here."""
    import jax

    devices = jax.devices("cpu")
    if len(devices) < 8:
        pytest.skip("needs 8 virtual CPU devices (XLA_FLAGS was set before this process imported jax)")
    return devices


# `make test` sets DSS_NO_SKIPS=1: a skipped test then fails the run. On a fresh machine
# a skip is a missing install step (or data) hidden behind a green suite.
_SKIPPED: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    worker = hasattr(session.config, "workerinput")  # pytest-xdist: the controller decides
    if os.environ.get("DSS_NO_SKIPS") == "1" and _SKIPPED and not worker and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if os.environ.get("DSS_NO_SKIPS") == "1" and _SKIPPED:
        terminalreporter.write_line(
            f"FAILED: {len(_SKIPPED)} test(s) skipped under DSS_NO_SKIPS=1 (make test): install what they need",
            red=True,
        )
        for line in _SKIPPED:
            terminalreporter.write_line(f"  {line}")


@pytest.fixture(scope="session")
def gcs_server():
    """A GCS emulator (gcp-storage-emulator, in memory) on 127.0.0.1 for the session, with
    the environment that points gcsfs (epath's gs:// client) and tensorstore (orbax's) at
    it, for this process and the binaries the tests start. Stops itself at the end."""
    import socket

    from gcp_storage_emulator.server import create_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _emulator_sends_generations()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=GCS_BUCKET)
    server.start()
    server._api._httpd.handle_error = lambda *_: None  # a client that hangs up early is no error
    url = f"http://127.0.0.1:{port}"
    env = {
        # gcsfs would first ask GCS's storage-control API (which the emulator lacks) what kind
        # of bucket it is, and log a warning on every binary's stderr
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",
        "EPATH_USE_TF": "false",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield url
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


GCS_BUCKET = "dss-test"


def _emulator_sends_generations():
    """Makes the emulator's downloads name the object's generation (x-goog-generation), as
    GCS's do: tensorstore's OCDBT (orbax's checkpoints) reads a manifest's generation from
    it to update it conditionally, and fails with "Malformed StorageGeneration" without it."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    if getattr(objects.download, "sends_generation", False):
        return
    plain = objects.download

    def download(request, response, storage, *args, **kwargs):
        plain(request, response, storage, *args, **kwargs)
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except Exception:  # not found: the plain handler answered 404
            return
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))

    download.sends_generation = True
    objects.download = download  # objects.get serves ?alt=media through it
    for _, handlers in server.HANDLERS:  # the router looks handlers up at each request
        for method, handler in list(handlers.items()):
            if handler is plain:
                handlers[method] = download


@pytest.fixture
def gcs(gcs_server):
    """A fresh gs:// prefix of the emulator's bucket for one test ("gs://dss-test/<hex>")."""
    import uuid

    return f"gs://{GCS_BUCKET}/{uuid.uuid4().hex[:12]}"
