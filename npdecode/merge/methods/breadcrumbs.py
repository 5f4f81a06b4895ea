"""Model Breadcrumbs: drop the largest `gamma` and smallest magnitudes, keep `density` (arXiv:2312.06795).

Defaults as MergeKit: normalize=false, rescale=false, lambda=1.0, int8_mask=false.
The formula lives in ``_task_arithmetic``.
"""

from npdecode.merge.methods._task_arithmetic import task_arithmetic_method
from npdecode.merge.registry import register

METHOD = register(
    task_arithmetic_method(
        "breadcrumbs",
        __name__,
        sparsification="magnitude_outliers",
        consensus=False,
        normalize=False,
        rescale=False,
        description=__doc__.splitlines()[0],
    )
)
