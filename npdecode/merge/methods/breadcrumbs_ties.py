"""Model Breadcrumbs pruning + TIES sign consensus (arXiv:2312.06795).

Defaults as MergeKit: normalize=false, rescale=false, lambda=1.0, int8_mask=false.
The formula lives in ``_task_arithmetic``.
"""

from npdecode.merge.methods._task_arithmetic import task_arithmetic_method
from npdecode.merge.registry import register

METHOD = register(
    task_arithmetic_method(
        "breadcrumbs_ties",
        __name__,
        sparsification="magnitude_outliers",
        consensus=True,
        normalize=False,
        rescale=False,
        description=__doc__.splitlines()[0],
    )
)
