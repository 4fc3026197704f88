"""Ordered parallel loading in worker processes that survive bad images and never outlive the run.

:class:`Loader` maps ``fn(i)`` over batches of indices in worker processes and yields the results
batch by batch, in order. Unlike ``torch.utils.data.DataLoader``:

- a worker that dies (killed for memory by the OOM killer, a crash in a native decoder) fails only
  the item it was working on: that item's result becomes ``on_crash(i, reason)`` and a fresh worker
  takes over the rest;
- workers exit when the parent dies, however it dies (SIGKILL included): on Linux the kernel sends
  them SIGKILL (``prctl(PR_SET_PDEATHSIG)``), a watchdog thread checks the parent's pid every
  second, and an idle worker sees its pipe close.

Memory is bounded: at most ``window`` items are in flight or waiting to be yielded.
"""

from __future__ import annotations

import collections
import ctypes
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable, Iterator

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Make this process exit when ``parent`` exits (Linux: PDEATHSIG; everywhere: a watchdog thread)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl: the watchdog below still works
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            threading.Event().wait(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="imagetok-parent-watchdog").start()


def _worker(fn: Callable[[int], Any], ctrl: Any, data: Any, parent: int, init: Callable[[], None] | None,
            siblings: list) -> None:
    """Receive indices on ``ctrl``; say "started i" on ``ctrl`` before each item, and send results on
    ``data`` from a thread, so sending one result overlaps decoding the next."""
    for c in siblings:  # forked copies of the parent's pipe ends: without them a pipe closes when the
        c.close()  # parent dies, so an idle worker sees EOF
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if init is not None:
        init()
    out: queue.SimpleQueue = queue.SimpleQueue()

    def sender() -> None:
        while (item := out.get()) is not None:
            try:
                data.send(item)
            except OSError:  # the parent is gone
                os._exit(0)
        os._exit(0)

    threading.Thread(target=sender, daemon=True, name="imagetok-loader-sender").start()
    while True:
        try:
            i = ctrl.recv()
            if i is None:
                out.put(None)
                return  # the sender exits the process once everything is sent
            ctrl.send(i)  # started i
        except (EOFError, OSError):  # the parent is gone
            os._exit(0)
        out.put((i, fn(i)))


def _reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else str(-exitcode)
        hint = " (killed: out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"the loader process died on this image with signal {name}{hint}"
    return f"the loader process died on this image (exit status {exitcode})"


class Loader:
    """Yield ``[fn(i) for i in batch]`` for each batch of ``batches``, in order, using ``workers`` processes.

    Args:
        fn: the per-item function (runs in the workers; with the ``fork`` start method it need not
            be picklable).
        batches: lists of indices.
        workers: number of processes (>= 1).
        on_crash: ``on_crash(i, reason)`` gives the result for an item whose worker died.
        window: items in flight or buffered at most (default ``max(4 * workers, 2 * batch)``).
        init: called once in each worker.
    """

    def __init__(self, fn: Callable[[int], Any], batches: Iterable[list[int]], workers: int,
                 on_crash: Callable[[int, str], Any], *, window: int | None = None, init: Callable[[], None] | None = None):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.fn, self.batches, self.workers, self.on_crash, self.init = fn, batches, workers, on_crash, init
        self.window = window
        methods = mp.get_all_start_methods()
        self.ctx = mp.get_context("fork" if "fork" in methods else "spawn")
        self.procs: list[Any] = []
        self.crashes = 0  # items whose worker died
        self.received = 0  # results received

    # ------------------------------------------------------------------------------ workers
    def _start(self) -> dict:
        ctrl, child_ctrl = self.ctx.Pipe(duplex=True)
        data, child_data = self.ctx.Pipe(duplex=False)
        fork = self.ctx.get_start_method() == "fork"
        siblings = [ctrl, data] + [c for w in self.procs for c in (w["ctrl"], w["data"])] if fork else []
        p = self.ctx.Process(target=_worker, args=(self.fn, child_ctrl, child_data, os.getpid(), self.init, siblings),
                             daemon=True, name="imagetok-loader")
        p.start()
        child_ctrl.close()
        child_data.close()
        w = {"proc": p, "ctrl": ctrl, "data": data, "todo": collections.deque(), "started": []}
        self.procs.append(w)
        return w

    def close(self) -> None:
        """Stop every worker: idle ones exit at once, busy ones are killed after a second."""
        import time

        for w in self.procs:
            try:
                w["ctrl"].send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 1.0
        for w in self.procs:
            w["proc"].join(timeout=max(0.0, deadline - time.monotonic()))
            if w["proc"].is_alive():
                w["proc"].kill()
                w["proc"].join()
            w["ctrl"].close()
            w["data"].close()
        self.procs = []

    # ---------------------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[list[Any]]:
        batches = iter(self.batches)
        pending: collections.deque[list[int]] = collections.deque()  # batches issued, not yet yielded
        waiting: collections.deque[int] = collections.deque()  # indices to (re)issue, in order
        results: dict[int, Any] = {}
        workers = [self._start() for _ in range(self.workers)]
        in_flight = 0
        idle_deaths = 0
        exhausted = False
        try:
            while True:
                window = self.window or max(4 * self.workers, 2 * max((len(b) for b in pending), default=1))
                while not exhausted and in_flight < window:
                    b = next(batches, None)
                    if b is None:
                        exhausted = True
                        break
                    pending.append(list(b))
                    waiting.extend(b)
                    in_flight += len(b)
                depth = max(2, -(-window // self.workers))  # items a worker may hold: it never waits for this process
                while waiting:  # hand out work to the least busy worker
                    w = min(workers, key=lambda w: len(w["todo"]))
                    if len(w["todo"]) >= depth:
                        break
                    i = waiting.popleft()
                    w["todo"].append(i)
                    try:
                        w["ctrl"].send(i)
                    except OSError:  # it just died: noticed below, and i is handed out again
                        pass
                while pending and all(i in results for i in pending[0]):
                    b = pending.popleft()
                    in_flight -= len(b)
                    yield [results.pop(i) for i in b]
                if not pending and exhausted:
                    return
                if not pending:
                    continue
                ready = wait([c for w in workers for c in (w["ctrl"], w["data"], w["proc"].sentinel)])
                for w in list(workers):
                    if w["ctrl"] in ready or w["data"] in ready or w["proc"].sentinel in ready:
                        if not self._drain(w, results):
                            workers.remove(w)
                            self.procs.remove(w)
                            w["proc"].join()
                            self._drain(w, results)  # anything sent before it died
                            w["ctrl"].close()
                            w["data"].close()
                            lost = list(w["todo"])
                            started = [i for i in w["started"] if i in lost]
                            if started:  # the last item it started was being worked on: that one failed
                                bad = started[-1]
                                self.crashes += 1
                                if self.crashes > 2 * self.workers + 2 and not self.received:
                                    raise RuntimeError(f"loader processes die before producing any result ({_reason(w['proc'].exitcode)})")
                                results[bad] = self.on_crash(bad, _reason(w["proc"].exitcode))
                                waiting.extendleft(reversed([i for i in lost if i != bad]))
                            else:  # died before starting any of its items: hand them out again
                                waiting.extendleft(reversed(lost))
                                idle_deaths += 1
                                if idle_deaths > 2 * self.workers:
                                    raise RuntimeError(f"loader processes keep dying before any work ({_reason(w['proc'].exitcode)})")
                            workers.append(self._start())
        finally:
            self.close()

    def _drain(self, w: dict, results: dict[int, Any]) -> bool:
        """Receive every "started" mark and finished result of ``w``; False if the worker is gone."""
        alive = True
        try:
            while w["ctrl"].poll():
                w["started"].append(w["ctrl"].recv())
        except (EOFError, OSError):
            alive = False
        try:
            while w["data"].poll():
                i, value = w["data"].recv()
                self.received += 1
                w["todo"].remove(i)
                results[i] = value
        except (EOFError, OSError):
            alive = False
        if len(w["started"]) > 64:  # only the unfinished tail matters
            w["started"] = [i for i in w["started"] if i in w["todo"]]
        return alive and w["proc"].is_alive()
