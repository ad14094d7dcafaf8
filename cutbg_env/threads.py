"""Torch's CPU threads in worker processes: fork-safe and without oversubscription.

Torch's CPU kernels run on an OpenMP thread pool (GNU libgomp on Linux). Once a process has run
a parallel kernel, the pool's threads exist in that process only: a child made by ``fork`` (the
default start method of ``multiprocessing`` on Linux, hence of Gymnasium's ``AsyncVectorEnv``
and SB3's ``SubprocVecEnv`` with ``start_method="fork"``) inherits the pool's bookkeeping but none
of its threads, and its first parallel kernel waits for them forever. Loading the classifier
runs such kernels, and ``AsyncVectorEnv`` builds one env in the parent to read its spaces, so a
fork worker of the default env hung on its first forward. A child that runs torch on **one**
thread never enters the pool and cannot hang.

One thread per worker is also the fast setting: N workers each starting one thread per core
oversubscribe the CPU (measured on 2 cores, 4 ``spawn`` workers of the default env: 5 env
steps/s in all with torch's default, 261 with one thread each).

So an env built in a worker process (:func:`in_worker`, any start method) sets torch to one
thread unless its ``num_threads`` says otherwise (:func:`configure_threads`); an env in the main
process leaves torch's setting alone unless ``num_threads`` is given.
"""

from __future__ import annotations

import multiprocessing


def in_worker() -> bool:
    """Whether this process was started by :mod:`multiprocessing` (fork, spawn or forkserver)."""
    return multiprocessing.parent_process() is not None


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op CPU threads for an env about to be built; return the count in use.

    ``num_threads=None``: one thread in a worker process (:func:`in_worker`), torch's current
    setting in the main process. A positive ``num_threads`` is set as given (process-wide, as
    every torch thread setting is). In a ``fork`` worker whose parent has run torch kernels,
    more than one thread hangs (see the module docstring).
    """
    import torch

    if num_threads is not None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads={num_threads!r}: expected None or an integer ≥ 1")
        torch.set_num_threads(num_threads)
    elif in_worker() and torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    return torch.get_num_threads()
