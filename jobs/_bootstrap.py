"""Make ``import xmc`` work in a copy of the repository where the package is not installed, such as a Ray
job's working directory on a cluster that never saw the checkout: the copy's ``platform/`` directory goes on
``sys.path`` when ``xmc`` cannot be imported otherwise. The jobs import this module first."""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("xmc") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
