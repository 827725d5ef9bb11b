"""Multi-process launch that also works on CPU-only machines (gloo backend).

Detectron2 v0.6's ``launch`` requires CUDA and NCCL once there is more than one
process; CUDA runs still go through it unchanged.
"""
import logging
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.engine.launch import launch as _detectron2_launch
from detectron2.utils import comm

__all__ = ["launch"]

logger = logging.getLogger(__name__)


def _free_local_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(main_func, num_processes_per_machine, num_machines=1, machine_rank=0,
           dist_url=None, args=(), backend=None, timeout=DEFAULT_TIMEOUT):
    """Run ``main_func(*args)`` in ``num_processes_per_machine`` processes on each machine.

    ``backend`` is "nccl" (CUDA; handed to Detectron2's ``launch``) or "gloo" (CPU);
    None picks "nccl" when CUDA is available. ``dist_url`` "auto" (or None with gloo)
    picks a free local TCP port, which only works on a single machine. Must be called
    on every machine of the job.
    """
    world_size = num_machines * num_processes_per_machine
    if world_size <= 1:
        return main_func(*args)
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    backend = backend.lower()
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"launch: backend must be 'nccl' or 'gloo', got {backend!r}.")
    if dist_url in ("auto", None) and num_machines > 1:
        raise ValueError(
            f"launch: a {num_machines}-machine job needs an explicit --dist-url "
            "(e.g. tcp://<machine 0 address>:<port>); 'auto' only works on one machine."
        )
    if backend == "nccl":
        return _detectron2_launch(main_func, num_processes_per_machine, num_machines=num_machines,
                                  machine_rank=machine_rank, dist_url=dist_url, args=args,
                                  timeout=timeout)

    if dist_url in ("auto", None):
        dist_url = f"tcp://127.0.0.1:{_free_local_port()}"
    mp.spawn(
        _gloo_worker,
        nprocs=num_processes_per_machine,
        args=(main_func, args, num_processes_per_machine, num_machines, machine_rank, dist_url,
              timeout),
        daemon=False,
    )


def _gloo_worker(local_rank, main_func, args, num_processes_per_machine, num_machines,
                 machine_rank, dist_url, timeout):
    # Every process would otherwise start one thread per core and they would fight over them.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_processes_per_machine))
    world_size = num_machines * num_processes_per_machine
    rank = machine_rank * num_processes_per_machine + local_rank
    try:
        dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank,
                                timeout=timeout)
    except Exception:
        logger.error("Could not join the process group at %s", dist_url)
        raise
    # comm.get_local_rank()/get_local_size() read this per-machine group. new_group must be
    # called by every process for every group, so each process creates all of them.
    for machine in range(num_machines):
        first = machine * num_processes_per_machine
        group = dist.new_group(list(range(first, first + num_processes_per_machine)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    try:
        comm.synchronize()
        main_func(*args)
    finally:
        dist.destroy_process_group()
