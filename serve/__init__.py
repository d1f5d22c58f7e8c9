"""The Ray Serve application (``serve.app:app``) and its deploy config (``serve/config.yaml``).

Serve imports ``serve.app`` from the application's working directory; on a cluster node that never had the
library installed, the ``xmc`` package of that same copy (``platform/xmc``) is put on ``sys.path``.
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("xmc") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
