"""The result type every estimator returns when asked for standard errors."""
from typing import NamedTuple, Union

import torch


class Estimate(NamedTuple):
    """An estimate with its Monte Carlo standard error.

    value:       the estimate (shape of the requested indices).
    stderr:      standard error of ``value``, same shape (zeros for exact results).
    evaluations: number of game evaluations spent (an int, or a LongTensor[B] for batched
                 per-pair budgets such as ``region_interaction``).
    """

    value: torch.Tensor
    stderr: torch.Tensor
    evaluations: Union[int, torch.Tensor]
