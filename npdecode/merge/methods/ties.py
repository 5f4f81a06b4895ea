"""TIES: magnitude trim to `density`, sign consensus, disjoint mean (arXiv:2306.01708).

Defaults as MergeKit: normalize=true, rescale=false, lambda=1.0, int8_mask=false.
The formula lives in ``_task_arithmetic``.
"""

from npdecode.merge.methods._task_arithmetic import task_arithmetic_method
from npdecode.merge.registry import register

METHOD = register(
    task_arithmetic_method(
        "ties",
        __name__,
        sparsification="magnitude",
        consensus=True,
        normalize=True,
        rescale=False,
        description=__doc__.splitlines()[0],
    )
)
