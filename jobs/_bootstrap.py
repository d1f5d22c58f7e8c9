"""Run the jobs with the library of the copy of the repository they are in: its ``platform/`` directory
goes first on ``sys.path``. So a job runs the same code from a checkout with the package installed (the
editable install points there anyway), from a copy without it (a Ray job's working directory on a cluster
that never saw the checkout), and from a copy whose code differs from an installed version. The jobs import
this module first; :func:`xmc.cluster.init_ray` ships the same package to the cluster's workers."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
