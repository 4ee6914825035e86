"""The pinned installs per platform: what each constraints file must hold, and how it is made.

    python constraints/pins.py            rewrite cpu.txt, gpu.txt and tpu.txt
    python constraints/pins.py --check    resolve each platform's install under its file

cpu.txt is the tested environment: `pip freeze --all` (less pip) of the virtualenv `make test` ran in (local
version labels such as `+cpu` dropped, so the file also serves a GPU box's torch). gpu.txt
and tpu.txt take cpu.txt and add what `jax[cuda12]` and `jax[tpu]` of the pinned jax bring
(the CUDA plugin and NVIDIA libraries, libtpu). `--check` (and tests/test_install.py) asks
pip to resolve each platform's install under its file, without installing anything, and
fails naming any package the resolution picks that the file does not pin.
"""

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent

# The project's extras each platform installs (`make install`, `make install-gpu`,
# `make install-tpu`, launch/install.sh).
EXTRAS = {"cpu": "test,torch,hf", "gpu": "gpu", "tpu": "tpu"}
# The jax extra whose additions gpu.txt and tpu.txt pin beyond cpu.txt.
JAX_EXTRA = {"gpu": "cuda12", "tpu": "tpu"}
HEADER = (
    "# Pinned by constraints/pins.py from the environment `make test` passed in; do not edit by hand.\n"
    "# Use: pip install -c constraints/{platform}.txt -e '.[{extras}]' (what make and launch/install.sh run).\n"
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: pathlib.Path) -> dict[str, str]:
    """{canonical name: version} of a constraints file, following its `-c` includes."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-c "):
            pins.update(read_pins(path.parent / line[3:].strip()))
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise ValueError(f"{path}: {line!r} is not 'name==version'")
        pins[canonical(name)] = version.strip()
    return pins


def resolve(requirements: list[str], constraints: pathlib.Path | None, python: str = sys.executable) -> dict[str, str]:
    """{canonical name: version} that pip would install for `requirements` under
    `constraints`, from nothing (installs nothing; reads the package index)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = pathlib.Path(tmp) / "report.json"
        command = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        command += ["--report", str(report)] + (["-c", str(constraints)] if constraints else []) + requirements
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
            raise RuntimeError(f"pip cannot resolve {' '.join(requirements)} under {constraints}: {errors}")
        installs = json.loads(report.read_text())["install"]
    return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


def check(platform: str) -> dict[str, str]:
    """Resolves the platform's install under its constraints file; returns what it picks.
    Raises naming the packages the file leaves unpinned."""
    path = HERE / f"{platform}.txt"
    pins = read_pins(path)
    picked = resolve([f".[{EXTRAS[platform]}]"], path)
    picked.pop("dss-jax", None)
    unpinned = sorted(f"{name}=={version}" for name, version in picked.items() if name not in pins)
    if unpinned:
        raise RuntimeError(f"{path} pins no version of {unpinned}: run python constraints/pins.py")
    return picked


def _strip_local(version: str) -> str:
    return version.split("+", 1)[0]


def write() -> None:
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = {}
    for line in frozen.splitlines():
        name, sep, version = line.partition("==")
        if sep and canonical(name) != "pip":  # pip itself is the installer, not installed by it
            cpu[canonical(name)] = _strip_local(version)
    (HERE / "cpu.txt").write_text(
        HEADER.format(platform="cpu", extras=EXTRAS["cpu"])
        + "".join(f"{name}=={version}\n" for name, version in sorted(cpu.items()))
    )
    for platform, extra in JAX_EXTRA.items():
        added = resolve([f"jax[{extra}]=={cpu['jax']}"], HERE / "cpu.txt")
        added = {name: version for name, version in added.items() if name not in cpu}
        (HERE / f"{platform}.txt").write_text(
            HEADER.format(platform=platform, extras=EXTRAS[platform])
            + "-c cpu.txt\n"
            + "".join(f"{name}=={version}\n" for name, version in sorted(added.items()))
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="resolve each platform's install; write nothing")
    if parser.parse_args().check:
        for platform in EXTRAS:
            picked = check(platform)
            print(f"{platform}: {len(picked)} packages, all pinned (jax {picked['jax']})")
    else:
        write()


if __name__ == "__main__":
    main()
