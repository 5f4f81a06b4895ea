"""Task arithmetic: base + lambda * sum_i w_i (x_i - base) (arXiv:2212.04089).

Defaults as MergeKit: normalize=false, rescale=false, lambda=1.0, int8_mask=false.
The formula lives in ``_task_arithmetic``.
"""

from npdecode.merge.methods._task_arithmetic import task_arithmetic_method
from npdecode.merge.registry import register

METHOD = register(
    task_arithmetic_method(
        "task_arithmetic",
        __name__,
        sparsification=None,
        consensus=False,
        normalize=False,
        rescale=False,
        description=__doc__.splitlines()[0],
    )
)
