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


def test_torch_is_pinned_in_every_install_path():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "torch==2.13.0" in pyproject["project"]["dependencies"]
    assert pyproject["project"]["requires-python"] == ">=3.10"
    assert {"test", "dev", "gpu"} <= set(pyproject["project"]["optional-dependencies"])
    setup = (REPO / "scripts" / "setup-venv.sh").read_text()
    assert setup.count('"torch==2.13.0"') == 2  # installed first, and pinned again with the project
    # CI runs exactly the README's test command, which installs through setup-venv.sh
    assert "exec bash scripts/test.sh" in (REPO / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in (REPO / "README.md").read_text()
    assert "bash scripts/setup-venv.sh" in (REPO / "scripts" / "test.sh").read_text()


def test_preparing_data_does_not_import_torch():
    import subprocess

    code = "import sys, xmc.data.prepare, xmc.data.dataset, xmc.experiment; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
