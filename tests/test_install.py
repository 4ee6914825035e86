"""The pinned installs per platform (constraints/, launch/install.sh): each platform's install
resolves with every package pinned, the suite runs in the pinned environment, and the
install script refuses what cannot work before it creates anything."""

import importlib.metadata
import importlib.util
import os
import subprocess

import pytest

from conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location("pins", REPO_ROOT / "constraints" / "pins.py")
pins = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pins)

INSTALL = REPO_ROOT / "launch" / "install.sh"


@pytest.mark.parametrize("platform", ["cpu", "gpu", "tpu"])
def test_each_platforms_install_resolves_with_every_package_pinned(platform):
    # pip resolves the install from nothing against the package index (it installs nothing)
    # and every package it picks must be pinned by the platform's file.
    picked = pins.check(platform)
    jax_version = importlib.metadata.version("jax")
    assert picked["jax"] == picked["jaxlib"] == jax_version
    if platform == "gpu":
        assert picked["jax-cuda12-plugin"] == picked["jax-cuda12-pjrt"] == jax_version
        assert any(name.startswith("nvidia-cudnn") for name in picked)
    if platform == "tpu":
        assert picked["libtpu"] == pins.read_pins(pins.HERE / "tpu.txt")["libtpu"]
    if platform == "cpu":
        assert {"torch", "transformers", "pytest", "datasets"} <= set(picked)


def test_the_suite_runs_in_the_environment_the_constraints_pin():
    # cpu.txt says it holds the versions the suite passed with: an installed package of
    # another version (an upgrade by hand) makes that untrue.
    differ = []
    for name, version in pins.read_pins(pins.HERE / "cpu.txt").items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if installed.split("+", 1)[0] != version:
            differ.append(f"{name} {installed} (pinned {version})")
    assert not differ, f"installed versions differ from constraints/cpu.txt: {differ}; run python constraints/pins.py"


def _install(tmp_path, *args, python=None):
    env = {k: v for k, v in os.environ.items() if k not in ("VENV", "PYTHON")}
    env["VENV"] = str(tmp_path / "venv")
    if python is not None:
        env["PYTHON"] = python
    return subprocess.run(["bash", str(INSTALL), *args], env=env, capture_output=True, text=True, timeout=60)


def test_install_refuses_a_python_older_than_the_pinned_jax_needs_before_creating_anything(tmp_path):
    old_python = tmp_path / "python3.10"
    old_python.write_text("#!/bin/sh\nexit 1\n")  # what `sys.version_info < (3, 11)` makes it say
    old_python.chmod(0o755)
    r = _install(tmp_path, "tpu", python=str(old_python))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"install.sh: PYTHON={old_python} is not Python 3.11 or newer (the pinned jax needs it)"
    ]
    assert not (tmp_path / "venv").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "name the platform: launch/install.sh cpu|gpu|tpu [EXTRA ...]"),
        (("cuda",), "unknown platform 'cuda': cpu, gpu or tpu"),
        (("tpu", "hf;rm -rf"), "'hf;rm -rf' is not an extra's name (see setup.py's extras_require)"),
    ],
)
def test_install_names_what_is_wrong_with_its_arguments(tmp_path, args, message):
    r = _install(tmp_path, *args)
    assert r.returncode == 2 and r.stderr.strip() == f"install.sh: {message}"
    assert not (tmp_path / "venv").exists()
