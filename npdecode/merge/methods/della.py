"""DELLA: magnitude-rank keep probabilities density±epsilon + TIES sign consensus (arXiv:2406.11617).

Defaults as MergeKit: normalize=true, rescale=true, lambda=1.0, int8_mask=false.
The formula lives in ``_task_arithmetic``.
"""

from npdecode.merge.methods._task_arithmetic import task_arithmetic_method
from npdecode.merge.registry import register

METHOD = register(
    task_arithmetic_method(
        "della",
        __name__,
        sparsification="rank_magnitude",
        consensus=True,
        normalize=True,
        rescale=True,
        description=__doc__.splitlines()[0],
    )
)
