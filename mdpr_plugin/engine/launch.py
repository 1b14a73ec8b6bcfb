"""Start one training process per device, on GPUs (NCCL) or CPUs (gloo), or join a torchrun job.

fastreid's ``launch`` (engine/launch.py:75,77) asserts CUDA and hard-codes the NCCL backend, and only
knows the processes it spawns itself: under ``torchrun`` nothing initialises the process group or
fastreid's ``comm._LOCAL_PROCESS_GROUP``, which ``comm.get_local_rank()`` asserts (utils/comm.py:45)
when the data loaders are built.

Flag semantics (fastreid's flags, unchanged names):

- ``--num-gpus N`` is the number of processes per machine. With CUDA each takes one GPU
  (``cuda:<local rank>``) and they talk over NCCL. Without CUDA (or with ``MODEL.DEVICE cpu``) it
  starts N CPU processes that talk over gloo: a way to run and test multi-process training anywhere,
  not a speed-up (the processes share the machine's cores; each gets cores / N threads).
- ``--num-machines``, ``--machine-rank``, ``--dist-url``: as in fastreid (``--dist-url auto`` picks a
  free local port on one machine).
- Under ``torchrun`` (RANK, WORLD_SIZE and LOCAL_RANK in the environment) torchrun has started the
  processes: the flags above are ignored, the process group is initialised from torchrun's
  environment (``env://``: MASTER_ADDR, MASTER_PORT).
"""
import contextlib
import logging
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fastreid.utils import comm

from ..errors import InputError, MDPRError, reporting_errors

logger = logging.getLogger(__name__)


class ProcessFailedError(MDPRError, RuntimeError):
    """One of the processes ``launch`` started ended with an error, which it reported itself."""


_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# gloo / NCCL collectives wait this long for a peer before failing (torch's default is 30 min for
# gloo and 10 min for NCCL; evaluation of a large gallery on rank 0 alone can take a while).
_TIMEOUT = timedelta(minutes=30)


def started_by_torchrun():
    return all(name in os.environ for name in _TORCHRUN_VARIABLES)


def backend_for(device_type):
    return "nccl" if device_type == "cuda" else "gloo"


def training_device_type(config_file, opts):
    """"cuda" or "cpu": where MODEL.DEVICE of this config trains on this machine (CPU when it names CUDA
    and there is none). Reads the config before any process starts, so a mistyped key fails once."""
    from ..config import build_config
    from ..devices import resolve_device

    return resolve_device(build_config(config_file, opts).MODEL.DEVICE).type


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=(),
           device_type=None):
    """fastreid's ``launch`` with a gloo path for CPUs and a torchrun path.

    ``device_type`` ("cuda" or "cpu") is where the model will train; None means CUDA if available.
    train_net.py passes the device of ``MODEL.DEVICE``.
    """
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"

    if started_by_torchrun():
        if num_gpus_per_machine != 1 or num_machines != 1:
            logger.warning("Started by torchrun: --num-gpus %d / --num-machines %d are ignored; torchrun's "
                           "--nproc_per_node / --nnodes decide the processes.", num_gpus_per_machine, num_machines)
        world_size = int(os.environ["WORLD_SIZE"])
        if world_size > 1:
            _join_torchrun_job(device_type)
        try:
            return main_func(*args)
        finally:
            _leave()

    if num_gpus_per_machine < 1 or num_machines < 1:
        raise InputError(f"--num-gpus ({num_gpus_per_machine}) and --num-machines ({num_machines}) must be >= 1.")
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        return main_func(*args)

    if device_type == "cuda":
        available = torch.cuda.device_count()
        if num_gpus_per_machine > available:
            raise InputError(
                f"--num-gpus {num_gpus_per_machine} but this machine has {available} visible GPU(s) "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). Pass --num-gpus "
                f"{available} or fewer (SOLVER.IMS_PER_BATCH is the total over all processes).")
    else:
        logger.warning(
            "No CUDA device for training (MODEL.DEVICE or no GPU): --num-gpus %d starts %d CPU processes that "
            "communicate over gloo. This runs multi-process training anywhere, but is not faster than one "
            "process on the same cores.", num_gpus_per_machine, num_gpus_per_machine)

    if dist_url == "auto" or (dist_url == _fastreid_default_url() and num_machines == 1):
        # fastreid's default port is derived from the user id: two multi-process runs of one user would collide
        if num_machines != 1:
            raise InputError("--dist-url auto picks a local port and works on one machine only; pass "
                             "--dist-url tcp://<address of machine 0>:<port> on every machine.")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// is not a reliable init_method in multi-machine jobs. Prefer tcp://")

    stops = mp.get_context("spawn").SimpleQueue()  # the one-line messages the processes stopped with
    try:
        mp.spawn(_spawned_worker, nprocs=num_gpus_per_machine, daemon=False,
                 args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, device_type, stops))
    except mp.ProcessExitedException as error:
        # A process that stopped on bad input handed its message over and exited with status 1 (the others were
        # then stopped): the first message is the run's one line, as one process would print it. One that ended
        # otherwise is named, without a traceback of the spawning machinery. A process that raised (a bug) comes
        # as ProcessRaisedException, with its traceback, and is not caught.
        if not stops.empty():
            raise SystemExit(stops.get()) from None
        how = f"was killed by {error.signal_name}" if error.signal_name else f"exited with status {error.exit_code}"
        raise ProcessFailedError(
            f"Training process {error.error_index} of {num_gpus_per_machine} on this machine {how}; its own "
            "message, if it printed one, is above.") from None


def _fastreid_default_url():
    """The --dist-url fastreid's argument parser gives when none is passed (a port derived from the user id)."""
    from fastreid.engine import default_argument_parser

    return default_argument_parser().get_default("dist_url")


@contextlib.contextmanager
def _stop_message_handed_to(stops):
    """A process that stops with a message (``SystemExit(message)``, which Python would print) puts it on ``stops``
    instead and exits with status 1: the launcher prints one line for the run, not one per process."""
    try:
        yield
    except SystemExit as stop:
        if not isinstance(stop.code, str):
            raise
        stops.put(stop.code)
        raise SystemExit(1) from None


def _spawned_worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args,
                    device_type, stops):
    rank = machine_rank * num_gpus_per_machine + local_rank
    _use_device(device_type, local_rank, num_gpus_per_machine)
    with _stop_message_handed_to(stops):
        with reporting_errors():
            try:
                dist.init_process_group(backend_for(device_type), init_method=dist_url, world_size=world_size,
                                        rank=rank, timeout=_TIMEOUT)
            except (RuntimeError, ValueError) as error:  # torch's DistNetworkError, a malformed address
                raise InputError(
                    f"Process {rank} of {world_size} could not join the process group at --dist-url {dist_url}: "
                    f"{' '.join(str(error).split())[:300]}. If the port is in use (another multi-process run), "
                    "pass --dist-url auto on one machine, or another port.") from None
        _set_local_process_group(machine_rank)
        try:
            main_func(*args)
        finally:
            _leave()


def _join_torchrun_job(device_type):
    local_rank = int(os.environ["LOCAL_RANK"])
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    _use_device(device_type, local_rank, local_size)
    dist.init_process_group(backend_for(device_type), init_method="env://", timeout=_TIMEOUT)
    # torchrun numbers its agents (machines) GROUP_RANK; without it, group by host name
    _set_local_process_group(os.environ.get("GROUP_RANK", socket.gethostname()))


def _use_device(device_type, local_rank, local_size):
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        # N processes on one machine would each start one thread per core
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))


def _set_local_process_group(machine):
    """Give fastreid's comm the group of processes on this machine (comm.get_local_rank needs it).

    Every process must create every group, in the same order: the machines' keys are exchanged first.
    """
    machines = [None] * dist.get_world_size()
    dist.all_gather_object(machines, str(machine))
    for key in sorted(set(machines), key=machines.index):
        group = dist.new_group([rank for rank, m in enumerate(machines) if m == key])
        if key == str(machine):
            comm._LOCAL_PROCESS_GROUP = group
    # as fastreid's launch: a barrier right after init avoids a timeout seen with NCCL
    comm.synchronize()


def _leave():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    comm._LOCAL_PROCESS_GROUP = None
