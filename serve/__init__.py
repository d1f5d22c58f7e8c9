"""The Ray Serve application (``serve.app:app``) and its deploy config (``serve/config.yaml``).

Serve imports ``serve.app`` from the application's working directory: the ``xmc`` package of that same copy
(``platform/xmc``) goes first on ``sys.path``, so the replicas run the code deployed with them, on nodes
where the library was never installed too.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
