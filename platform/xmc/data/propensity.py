"""Label propensities of Jain, Prabhu and Varma (KDD 2016, §7), used by the PS metrics and by
inverse-propensity positive sampling.

The propensity p_l models the chance that a relevant label l was actually annotated; rare labels are
missed more often, so ``1/p_l`` up-weights them. With N training points and N_l of them carrying l:

    1/p_l = 1 + C (N_l + B)^(-A),     C = (ln N - 1) (B + 1)^A

A, B are fitted per dataset family: Amazon 0.6/2.6, Wikipedia 0.5/0.4, everything else 0.55/1.5.
"""

from __future__ import annotations

import numpy as np

from xmc.data.config import DEFAULT_A, DEFAULT_B


def inverse_propensity(label_counts: np.ndarray, num_train_points: int, a: float = DEFAULT_A,
                       b: float = DEFAULT_B) -> np.ndarray:
    """Inverse propensity 1/p_l of every label from its training frequency ``label_counts[l]``."""
    if num_train_points < 1:
        raise ValueError(f"num_train_points must be >= 1, got {num_train_points}")
    counts = np.asarray(label_counts, dtype=np.float64)
    c = (np.log(num_train_points) - 1.0) * (b + 1.0) ** a
    return 1.0 + c * (counts + b) ** (-a)
