"""The sdist as a distribution would use it: built, unpacked, a wheel built from it, and
its own tests run from the unpacked tree against the unpacked package.

Builds without isolation, so it needs ``build`` and setuptools>=77 in this environment
(the dev extra has both); skipped otherwise.  Marked ``packaging``: deselect it with
``-m 'not packaging'``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.packaging

# What the unpacked sdist must hold for its tests and examples to run.
NEEDED = [
    "LICENSE",
    "README.md",
    "CHANGELOG.md",
    "pyproject.toml",
    "mailguard/py.typed",
    "mailguard/data/mailguard.toml",
    "mailguard/data/fail2ban/filter.d/mailguard.conf",
    "tests/stacks.py",
    "tests/redis_server.py",
    "tests/data/zmprov-gacf.txt",
    "examples/mailguard.toml",
    "examples/fail2ban/filter.d/mailguard.conf",
    "examples/fail2ban/jail.d/mailguard.local",
    "examples/django_site/manage.py",
    "docs/architecture.md",
    "scripts/test.sh",
    "benchmarks/core.py",
]
# A quick subset of the sdist's own tests: the core, every example under its stack, the
# fail2ban filters, the package data and CLI verbs.
SUBSET = [
    "tests/test_core.py",
    "tests/test_examples.py",
    "tests/test_fail2ban.py",
    "tests/test_package_data.py",
]


def _can_build() -> str | None:
    try:
        import build  # noqa: F401
    except ImportError:
        return "needs `build` (pip install -e '.[dev]')"
    major = int(metadata.version("setuptools").split(".")[0])
    if major < 77:
        return f"needs setuptools>=77 for the license expression (have {major})"
    return None


def _build(args: list[str], source: Path, outdir: Path) -> Path:
    done = subprocess.run(
        [sys.executable, "-m", "build", *args, "--no-isolation", "--outdir", str(outdir)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (built,) = outdir.iterdir()
    return built


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    why = _can_build()
    if why:
        pytest.skip(why)
    base = tmp_path_factory.mktemp("sdist")
    sdist = _build(["--sdist"], ROOT, base / "dist")
    assert sdist.name.endswith(".tar.gz")
    with tarfile.open(sdist) as archive:
        if hasattr(tarfile, "data_filter"):  # 3.10.12+, 3.11.4+
            archive.extractall(base / "unpacked", filter="data")
        else:  # pragma: no cover
            archive.extractall(base / "unpacked")  # our own sdist
    (tree,) = (base / "unpacked").iterdir()
    return tree


def test_sdist_holds_what_its_tests_need(unpacked: Path) -> None:
    missing = [name for name in NEEDED if not (unpacked / name).is_file()]
    assert not missing
    assert not list(unpacked.rglob("__pycache__"))
    pkg_info = (unpacked / "PKG-INFO").read_text("utf-8")
    assert "License-Expression: MIT" in pkg_info and "License-File: LICENSE" in pkg_info
    assert "Classifier: Development Status :: 3 - Alpha" in pkg_info
    requires = sorted(
        line.split(":", 1)[1].strip().split(">")[0].split(";")[0].strip()
        for line in pkg_info.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    )
    assert requires == ["cachetools", "netaddr", "tomli"]


def test_wheel_from_the_sdist_installs_the_data_files(unpacked: Path, tmp_path: Path) -> None:
    wheel = _build(["--wheel"], unpacked, tmp_path / "dist")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in [
        "mailguard/py.typed",
        "mailguard/data/mailguard.toml",
        "mailguard/data/fail2ban/filter.d/mailguard.conf",
        "mailguard/data/fail2ban/filter.d/mailguard-dos.conf",
        "mailguard/data/fail2ban/jail.d/mailguard.local",
        "mailguard/data/console/console.html",
        "mailguard/data/console/console.js",
        "mailguard/data/console/console.css",
    ]:
        assert name in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)
    assert not any(n.startswith(("tests/", "examples/", "benchmarks/")) for n in names)


def test_sdist_runs_its_own_tests(unpacked: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(unpacked), "PYTHONDONTWRITEBYTECODE": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import mailguard; print(mailguard.__file__)"],
        cwd=unpacked,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert Path(where.stdout.strip()).is_relative_to(unpacked), where.stdout + where.stderr
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x", *SUBSET],
        cwd=unpacked,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "error" not in done.stdout.splitlines()[-1]
