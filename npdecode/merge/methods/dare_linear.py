"""DARE pruning (keep with probability `density`, rescale 1/density), no sign consensus (arXiv:2311.03099).

Defaults as MergeKit: normalize=false, rescale=true, lambda=1.0, int8_mask=false.
The formula lives in ``_task_arithmetic``.
"""

from npdecode.merge.methods._task_arithmetic import task_arithmetic_method
from npdecode.merge.registry import register

METHOD = register(
    task_arithmetic_method(
        "dare_linear",
        __name__,
        sparsification="random",
        consensus=False,
        normalize=False,
        rescale=True,
        description=__doc__.splitlines()[0],
    )
)
