"""``sweep --executor local`` (the default): the runs as jobs of submitit's local executor on this machine.

The local executor is submitit's (what ``--executor submitit`` uses where there is no Slurm), with the job
settings that the command's own options give: one run at a time, or one per GPU group of ``--gpus`` side by
side; the trainer through this python, torchrun (``--gpus-per-run`` above 1) or ``--launcher``; no retries (a
failed run is reported and the next one starts; the sweep run again retries it) and no time limit. Each job
runs the trainer in its own process: a crash or an out-of-memory kill ends one run, not the sweep; every run
starts from a fresh allocator and torch.compile cache; the glibc malloc settings that small CPU models need
(the CPU notes) are environment variables read at process start, set in the job's setup unless the user set
them; and a thread count can be set per run, which is what makes shards side by side on a few CPU cores work
(two 2-thread processes on 2 cores lose 26-48%).
"""

from __future__ import annotations

import os
import shlex

from lowrank_lm.launch.cluster import ClusterSpec, Resources

# glibc malloc settings for small CPU models (reference CPU notes): keep big tensors on the heap.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TOP_PAD_": "2147483648",
              "MALLOC_TRIM_THRESHOLD_": "8589934592"}
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def local_cluster(slots: list[str] | None, gpus_per_run: int | None, threads: int | None,
                  launcher: str | None, shards: int) -> ClusterSpec:
    """The job settings of ``sweep --executor local``: ``slots`` are the GPU groups of ``--gpus`` (None: one run
    at a time, seeing the GPUs this command sees)."""
    parallel = shards * (len(slots) if slots else 1)
    if threads is None and parallel > 1 and not os.environ.get("OMP_NUM_THREADS"):
        # runs side by side on one machine share its cores; oversubscribing them costs far more than it gains
        threads = max(1, (os.cpu_count() or 1) // parallel)
    k = (gpus_per_run or 1) if slots else 0  # above 1, the job's line is torchrun --standalone (cluster.launch_line)
    setup = [f"export {name}=${{{name}:-{value}}}" for name, value in MALLOC_ENV.items()]  # a user's own wins
    setup += [f"export {name}={threads}" for name in THREAD_ENV] if threads is not None else []
    if not slots:
        # submitit's local executor hides every GPU from a job that asks for none: the run sees what we see
        seen = os.environ.get("CUDA_VISIBLE_DEVICES")
        setup.append("unset CUDA_VISIBLE_DEVICES" if seen is None
                     else f"export CUDA_VISIBLE_DEVICES={shlex.quote(seen)}")
    res = Resources(gpus_per_node=k, setup=setup, retries=0, max_parallel=len(slots) if slots else 1,
                    launcher=launcher)
    return ClusterSpec(res)
