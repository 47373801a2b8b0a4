"""The package as published: the sdist and wheel build offline and pass ``twine check``, the metadata
says what the project is (SPDX licence, Python floor, typed), the version has one source, and mypy
is clean on the package with the configuration in pyproject.toml."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def run(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"{args}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """sdist and wheel built from a copy of the source tree, without build isolation (nothing downloaded)."""
    src = tmp_path_factory.mktemp("src") / "droppath-surgery"
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache",
                                    ".mypy_cache", "site", "*.png")
    shutil.copytree(ROOT, src, ignore=ignore)
    out = src / "dist"
    proc = run("-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out), str(src))
    # No warning but "byte-compiling is disabled" (PYTHONDONTWRITEBYTECODE): in particular no licence
    # deprecation (setuptools warns about a licence table or a licence classifier).
    lines = (proc.stdout + proc.stderr).splitlines()
    warnings = [line for line in lines if ("warn" in line.lower() or "deprecat" in line.lower()) and "byte-compiling" not in line]
    assert not warnings, warnings
    return out


def test_sdist_and_wheel_pass_twine_check(dist):
    files = sorted(dist.iterdir())
    assert sorted(f.suffix for f in files) == [".gz", ".whl"], files
    proc = run("-m", "twine", "check", "--strict", *map(str, files))
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_wheel_metadata_licence_typing_and_version(dist):
    import droppath_surgery

    wheel = next(dist.glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(meta_name).decode())
        licence = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
        assert "Apache License" in zf.read(licence).decode() and "Version 2.0, January 2004" in zf.read(licence).decode()
    assert "droppath_surgery/py.typed" in names
    assert "droppath_surgery/cli.py" in names and not any(n.startswith(("tests/", "examples/")) for n in names)
    assert meta["License-Expression"] == "Apache-2.0" and meta["License"] is None
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["Version"] == PROJECT["version"] == droppath_surgery.__version__
    assert "Typing :: Typed" in meta.get_all("Classifier")
    assert "Programming Language :: Python :: 3.11" in meta.get_all("Classifier")
    assert meta["Keywords"] and meta.get_all("Project-URL")
    assert meta["Description-Content-Type"] == "text/markdown"
    assert any(r.startswith("torch>=") for r in meta.get_all("Requires-Dist"))


def test_sdist_carries_licence_changelog_and_tests(dist):
    sdist = next(dist.glob("*.tar.gz"))
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "pyproject.toml", "droppath_surgery/py.typed"} <= names


def test_version_has_one_source():
    # pyproject.toml holds the version; the package reads it from the installed metadata.
    text = "\n".join((ROOT / "droppath_surgery" / f).read_text() for f in ("__init__.py", "cli.py"))
    assert PROJECT["version"] not in text
    assert 'metadata.version("droppath-surgery")' in text


def test_floors_are_the_tested_versions():
    """Every floor in pyproject.toml is met by what this environment (CI's) has installed; so what is
    installed here is at or above the floor and the floor is what CI tests, not an older guess."""
    from importlib import metadata

    from packaging.requirements import Requirement

    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra, items in PROJECT["optional-dependencies"].items():
        reqs += [Requirement(r) for r in items if not r.startswith("droppath-surgery")]
    for req in reqs:
        installed = metadata.version(req.name)
        assert req.specifier.contains(installed, prereleases=True), (str(req), installed)
    assert PROJECT["requires-python"] == ">=3.11" and sys.version_info[:2] == (3, 11)


def test_mypy_is_clean(tmp_path):
    pytest.importorskip("mypy", reason="mypy is in the test extras")
    # A fresh cache outside the tree, as on CI's clean clone (about 30 s of CPU).
    env = {**os.environ, "MYPY_CACHE_DIR": str(tmp_path / "mypy-cache")}
    proc = subprocess.run([sys.executable, "-m", "mypy"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert proc.returncode == 0 and "Success: no issues found" in proc.stdout, proc.stdout[-5000:] + proc.stderr[-2000:]


def test_public_names_are_lazy_and_all_of_them_import():
    code = (
        "import sys\n"
        "import droppath_surgery as d\n"
        "assert 'torch' not in sys.modules, 'import droppath_surgery imported torch'\n"
        "ns = {}\n"
        "exec('from droppath_surgery import *', ns)\n"
        "missing = [n for n in d.__all__ if n not in ns]\n"
        "assert not missing, missing\n"
        "assert 'torch' in sys.modules\n"
        "assert set(d.__all__) <= set(dir(d)) and 'training' in dir(d)\n"
        "assert d.apply_drop_path is d.api.apply_drop_path and d.DropPath is d.nn.DropPath\n"
        "assert d.drop_path is d.nn.functional.drop_path and callable(d.drop_path)\n"
        "assert d.training.Late(0.1, start=2)(3) == 0.1\n"
        "try:\n"
        "    d.no_such_name\n"
        "except AttributeError as exc:\n"
        "    assert 'no_such_name' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
        "print('ok', *sorted(d.__all__))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # What type checkers and the API docs see (the TYPE_CHECKING imports) is exactly __all__.
    tree = ast.parse((ROOT / "droppath_surgery" / "__init__.py").read_text())
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    typed = {a.asname or a.name for n in guarded.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert proc.stdout.split() == ["ok", *sorted(typed)] and len(typed) >= 30
