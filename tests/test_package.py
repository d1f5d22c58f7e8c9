"""The package installs as ``xmc`` from ``platform/`` without shadowing the standard library."""

from __future__ import annotations

import importlib
import sys

import tomllib

from conftest import REPO


def test_platform_is_the_standard_library_module():
    assert not (REPO / "platform" / "__init__.py").exists()
    platform = importlib.import_module("platform")
    assert hasattr(platform, "python_version"), platform
    assert platform.__file__.startswith(sys.base_prefix) or "site-packages" not in platform.__file__
    assert platform.python_version() == ".".join(map(str, sys.version_info[:3]))


def test_xmc_imports_from_the_source_root():
    import xmc

    assert xmc.__file__ is not None
    assert (REPO / "platform" / "xmc" / "__init__.py").samefile(xmc.__file__)


def test_the_installed_torch_is_the_pinned_one():
    """An unpinned torch pulls several GB of CUDA wheels on a CPU machine: the project pins one version, and
    the environment the tests run in (installed by scripts/setup-venv.sh, as CI's is) has exactly it."""
    import torch
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    torch_requirement = next(Requirement(spec) for spec in pyproject["project"]["dependencies"]
                             if Requirement(spec).name == "torch")
    assert str(torch_requirement.specifier).startswith("==")
    assert torch_requirement.specifier.contains(torch.__version__.split("+")[0])


def test_preparing_data_does_not_import_torch():
    import subprocess

    code = ("import sys, xmc, xmc.data.prepare, xmc.data.dataset, xmc.data.split, xmc.experiment; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
