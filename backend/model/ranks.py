"""One training as N processes (ranks) on one machine: started here, watched until they end, their end explained.

``run_ranks(n, fn, args, progress)`` starts ``fn(*args, report)`` in ``n`` fresh interpreters (``spawn``: forking
a process that holds threads or a CUDA context is unsafe), each with the environment that ``accelerate`` reads to
join them into one process group (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT: gloo on a CPU, NCCL on GPUs).
The caller's process only watches: what rank 0 reports (``report(progress)``) reaches ``progress`` here, rank 0's
return value is returned, and a rank that dies (a signal, an error) before its part is done ends every other one at
once, so no rank waits on a dead peer until a collective times out (one that dies on its way out, its part done, is
logged and costs nothing: no collective waits on it then). Its death is raised here, saying which rank and how; an error a rank
raised is raised again as it was, as one process would have raised it.

accelerate's own launchers do not fit this place: ``accelerate launch`` / torchrun start a new command line, and
``notebook_launcher`` forks the caller; neither hands back a result or progress to the process that asked.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import socket
import traceback
from typing import Any, Callable

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.05  # how often the watcher looks for a rank's end between messages
STOP_GRACE_S = 10.0  # how long a rank told to stop (SIGTERM) has before it is killed


class RankDied(RuntimeError):
    """A training process ended without finishing: killed by a signal, or exited with no error of its own."""


def free_port() -> int:
    """A TCP port free on this machine now, for the process group's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_environment(rank: int, world: int, port: int) -> dict[str, str]:
    """What ``accelerate`` (and torch.distributed's ``env://``) reads to place a process in the group.

    >>> rank_environment(1, 2, 29500)["LOCAL_RANK"], rank_environment(1, 2, 29500)["WORLD_SIZE"]
    ('1', '2')
    """
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def process_title(rank: int, world: int) -> str:
    """The name ``ps``/``top`` show for a rank (at most 15 characters, Linux's limit).

    >>> process_title(1, 8)
    'ner-train 1/8'
    """
    return f"ner-train {rank}/{world}"[:15]


def _name_process(title: str) -> None:
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(title)
    except OSError:
        pass  # not Linux: the rank keeps the interpreter's name


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when its parent ends (Linux): a watcher killed by SIGKILL (a training child
    or queue worker stopped by hand, out of memory) must not leave its ranks training for nobody."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux
    if os.getppid() != parent:  # it ended before the line above
        os._exit(1)


def _rank_main(rank: int, world: int, port: int, fn: Callable, args: tuple, messages: Any, parent: int) -> None:
    """A rank's entry: its environment and name, then ``fn``; its result (rank 0) or its error goes to ``messages``."""
    _die_with(parent)
    os.environ.update(rank_environment(rank, world, port))
    _name_process(process_title(rank, world))

    def report(progress: Any) -> None:
        messages.put(("progress", rank, progress))

    try:
        result = fn(*args, report)
    except BaseException as error:  # noqa: BLE001 - the watcher explains every end
        messages.put(("error", rank, _picklable(error)))
        messages.close()
        messages.join_thread()  # the error is in the pipe before this process is seen to end
        raise
    # its part is done (rank 0: the model saved): an abort on the way out (a C++ thread left at exit) costs nothing
    messages.put(("result", rank, result) if rank == 0 else ("done", rank, None))


def _picklable(error: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(error).__name__}: {error}\n{''.join(traceback.format_exception(error))}")


def describe_exit(rank: int, world: int, exitcode: int | None) -> str:
    """How a rank's end reads in /status and on the model card.

    >>> describe_exit(1, 2, -9)
    'training process 1 of 2 (rank 1) was killed by signal 9 (SIGKILL): out of memory, or stopped by hand?'
    >>> describe_exit(0, 2, 3)
    'training process 0 of 2 (rank 0) ended with exit code 3 and no error of its own'
    """
    which = f"training process {rank} of {world} (rank {rank})"
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown"
        return f"{which} was killed by signal {-exitcode} ({name}): out of memory, or stopped by hand?"
    return f"{which} ended with exit code {exitcode} and no error of its own"


def run_ranks(world: int, fn: Callable, args: tuple, progress: Callable[[Any], None] | None = None) -> Any:
    """Run ``fn(*args, report)`` as ranks 0..world-1 and return rank 0's result (see the module docstring).

    A rank killed by a signal (or ending without an error of its own) is a ``RankDied`` naming it; otherwise the
    first error a rank raised is raised again. Either way every rank has ended when this returns or raises.
    """
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    port = free_port()
    ranks = [context.Process(target=_rank_main, args=(rank, world, port, fn, args, messages, os.getpid()),
                             name=process_title(rank, world)) for rank in range(world)]
    result, errors, step = None, {}, None
    failed: dict[int, int | None] = {}  # rank -> exit code, of the ranks that ended by themselves without success
    finished: set[int] = set()  # ranks that did their part (rank 0: returned its result)
    try:
        for process in ranks:
            process.start()

        def take(wait: float) -> bool:
            nonlocal result, step
            try:
                kind, rank, body = messages.get(timeout=wait)
            except queue.Empty:
                return False
            if kind == "progress":
                step = body
                if progress is not None:
                    progress(body)
            elif kind == "result":
                result = body
                finished.add(rank)
            elif kind == "done":
                finished.add(rank)
            else:
                errors[rank] = body
            return True

        while not failed and any(process.exitcode is None for process in ranks):
            take(WATCH_INTERVAL_S)
            ended = {rank: process.exitcode for rank, process in enumerate(ranks) if process.exitcode not in (None, 0)}
            if ended:
                while take(0):  # what they said before they ended: a rank may have finished its part first
                    pass
                failed = {rank: code for rank, code in ended.items() if rank not in finished}
        late = {rank: process.exitcode for rank, process in enumerate(ranks)
                if process.exitcode not in (None, 0) and rank in finished}
        for rank, code in late.items():  # after all its collectives: the others never waited on it
            log.warning("%s, after it had done its part; the run goes on", describe_exit(rank, world, code))
        _stop(ranks)
        while take(WATCH_INTERVAL_S):  # what the ranks said before they ended
            pass
    finally:
        _stop(ranks)
        messages.close()
    if failed:
        raise _cause(failed, errors, world, step)
    if result is None:
        raise RankDied(f"rank 0 of {world} ended without a result")
    return result


def _cause(failed: dict[int, int | None], errors: dict[int, BaseException], world: int, step: Any) -> BaseException:
    """The root of a failed run: a rank that was killed (the others' errors follow from its death), else the error
    of a rank that ended by itself (one that failed in a collective only because a peer had gone comes last), else
    the first rank that ended."""
    where = f" at step {step.step} of {step.total_steps}" if getattr(step, "total_steps", 0) else ""
    tail = f"{where}; the other processes were stopped and the run kept no version"
    killed = sorted(rank for rank, code in failed.items() if code is not None and code < 0)
    if killed:
        return RankDied(describe_exit(killed[0], world, failed[killed[0]]) + tail)
    own = sorted(errors, key=lambda rank: (rank not in failed, _lost_peer(errors[rank]), rank))
    if own:
        return errors[own[0]]
    rank = min(failed)
    return RankDied(describe_exit(rank, world, failed[rank]) + tail)


def _lost_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because another rank went away."""
    import torch.distributed

    text = str(error).lower()
    return isinstance(error, torch.distributed.DistError) or "connection closed by peer" in text or "gloo" in text


def _stop(ranks: list) -> None:
    """End every rank still running (SIGTERM, then SIGKILL after ``STOP_GRACE_S``) and reap them."""
    for process in ranks:
        if process.pid is not None and process.exitcode is None:
            process.terminate()
    for process in ranks:
        if process.pid is not None:
            process.join(STOP_GRACE_S)
            if process.exitcode is None:
                process.kill()
                process.join()
