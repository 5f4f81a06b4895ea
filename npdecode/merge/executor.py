"""Executing a plan: one output tensor at a time, at most ``threads`` in flight.

For each task the executor reads each distinct input tensor once (the base's object is reused
when the base is also listed among the models, as the registry contract promises), aligns
vocabulary axes, casts to the computation dtype on the chosen device, calls the method, casts
to the output dtype and hands the result to the sink. Nothing else is kept, so peak memory is
a few tensors per input per worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import torch

from npdecode.errors import NpdecodeError
from npdecode.merge.plan import MergePlan, TensorRef, TensorTask


def _load(plan: MergePlan, ref: TensorRef, task: TensorTask) -> torch.Tensor:
    if ref.name is None:  # missing_tensors: zero
        template = next(r for r in task.inputs if r.name is not None)
        return torch.zeros(plan.sources[template.ref].reader.shape(template.name), dtype=plan.compute_dtype)
    return plan.sources[ref.ref].reader.get(ref.name)


def compute_task(plan: MergePlan, task: TensorTask, device: torch.device) -> torch.Tensor:
    """The merged tensor of ``task`` (on CPU, in ``task.out_dtype``)."""
    loaded: dict[TensorRef, torch.Tensor] = {}
    for ref in [*task.inputs, *([task.base] if task.base else [])]:
        if ref not in loaded:
            loaded[ref] = _load(plan, ref, task)
    if task.copy:
        return loaded[task.inputs[0]].to(task.out_dtype).clone()
    if task.vocab_axis is not None and plan.vocab is not None:
        by_model = {ref.ref: t for ref, t in loaded.items()}
        aligned = plan.vocab.align(by_model, task.vocab_axis)
        loaded = {ref: aligned[ref.ref] for ref in loaded}
    for ref, tensor in loaded.items():
        loaded[ref] = tensor.to(device=device, dtype=plan.compute_dtype)
    tensors = [loaded[r] for r in task.inputs]
    base = loaded[task.base] if task.base else None
    generator = None
    if task.method.uses_random:
        generator = torch.Generator(device=device)
        generator.manual_seed(task.seed)
    versions = [t._version for t in loaded.values()]
    try:
        out = task.method.func(tensors, base, task.model_params, task.params, generator)
    except NpdecodeError as err:
        raise NpdecodeError(f"{task.out_name}: {err}") from None
    if [t._version for t in loaded.values()] != versions:
        # inputs may be views of the memory-mapped checkpoints shared with other tasks
        raise RuntimeError(
            f"merge method {task.method.name!r} wrote into its input tensors ({task.out_name}); "
            "methods must be pure functions of their inputs"
        )
    if tuple(out.shape) != task.shape:
        raise NpdecodeError(
            f"{task.out_name}: merge method {task.method.name!r} returned shape {tuple(out.shape)}, "
            f"expected {task.shape}"
        )
    return out.to(dtype=task.out_dtype).cpu()


def task_cost(plan: MergePlan, task: TensorTask) -> int:
    """Rough bytes a task holds at its peak: its distinct inputs plus output and one temporary."""
    numel = 1
    for dim in task.shape:
        numel *= dim
    distinct = len({*task.inputs, *([task.base] if task.base else [])})
    return numel * torch.tensor([], dtype=plan.compute_dtype).element_size() * (distinct + 2)


def run_tasks(
    plan: MergePlan,
    write: Callable[[str, torch.Tensor], None],
    device: torch.device,
    threads: int = 1,
    on_done: Callable[[], None] | None = None,
) -> None:
    """Compute every task and ``write(name, tensor)`` it.

    With several threads, tasks run concurrently only while their summed cost stays within
    the cost of the largest single task: layers run in parallel, while an embedding-sized
    tensor runs alone, so peak memory never exceeds what one thread would need.

    On CPU each torch op runs on its calling thread for the duration (``set_num_threads(1)``,
    restored afterwards; worker threads set it too): the methods work in blocks of 32K
    entries, too small for torch's thread pool to pay off, and on a loaded machine every wake-up
    of that pool can cost milliseconds (a float64 dot over 32M entries in 32K blocks took 16.5 s
    with 2 pool threads, 0.25 s with one, on this project's 2-core machine under load). The
    parallelism comes from ``threads`` instead.
    """
    if device.type != "cpu":
        _run_tasks(plan, write, device, threads, on_done)
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run_tasks(plan, write, device, threads, on_done, initializer=_one_op_thread)
    finally:
        torch.set_num_threads(previous)


def _one_op_thread() -> None:
    torch.set_num_threads(1)


def _run_tasks(plan, write, device, threads, on_done, initializer=None) -> None:
    if threads <= 1:
        for task in plan.tasks:
            write(task.out_name, compute_task(plan, task, device))
            if on_done:
                on_done()
        return
    costs = {id(t): task_cost(plan, t) for t in plan.tasks}
    budget = max(costs.values(), default=0)

    def job(task: TensorTask) -> None:
        write(task.out_name, compute_task(plan, task, device))

    with ThreadPoolExecutor(max_workers=threads, initializer=initializer) as pool:
        pending: dict[Future, int] = {}
        for task in plan.tasks:
            cost = costs[id(task)]
            while pending and (len(pending) >= threads or sum(pending.values()) + cost > budget):
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    pending.pop(fut)
                _finish(done, on_done)
            pending[pool.submit(job, task)] = cost
        done, _ = wait(pending)
        _finish(done, on_done)


def _finish(done: set[Future], on_done: Callable[[], None] | None) -> None:
    for fut in done:
        fut.result()  # re-raise a worker's error here
        if on_done:
            on_done()
