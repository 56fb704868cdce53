"""A stop stops (DESIGN.md rule 8): SIGTERM or SIGINT ends a command and every process
it started, promptly, with what was in flight put back or recorded.

The parent turns the signal into a stop request that its loops check between units of
work (or, where there is nothing to put back, into :class:`Stopped` at once), asks its
children to stop with SIGTERM, kills those still there after a short grace, reaps them
all, and only then leaves the run lock. A child ignores SIGINT, because a terminal's
Ctrl-C reaches the whole process group and the parent coordinates; it winds down on
SIGTERM; and it gets SIGTERM when its parent dies, however the parent died.

Plain standard library, so that every layer may use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.process import BaseProcess
from subprocess import Popen
from types import FrameType
from typing import Any

STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
# How a parent tells a child started with subprocess who it is (see as_child).
PARENT_PID_VARIABLE = "ROLLOUT_PARENT_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_WATCH_PARENT_EVERY = 0.2  # seconds; where prctl is missing


class Stopped(KeyboardInterrupt):
    """The command was asked to stop, by ``signum``, and wound down.

    A KeyboardInterrupt, so that no ``except Exception`` on the way up mistakes it for a
    failure of the work at hand (a message that failed to render, say)."""

    def __init__(self, signum: int, summary: str = "") -> None:
        super().__init__(summary or f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention for a death by signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


# The last stop signal a handler of this module took in this process: DuckDB turns a
# signal that lands while it works (the Stopped a handler raised, Python's own
# KeyboardInterrupt) into RuntimeError("Query interrupted"), which no longer says which.
_last_signal: int | None = None


def interrupted_query(error: BaseException) -> bool:
    """Whether ``error`` is DuckDB's word for a query a signal interrupted (the CLI's
    stops here, a flow run's in flows.common.stops_kept): its own check of the signal
    (RuntimeError "Query interrupted"), or the interrupt :func:`interrupting_on_stop`
    asked of it (duckdb.InterruptException; named, as this module imports no DuckDB)."""
    if isinstance(error, RuntimeError) and str(error) == "Query interrupted":
        return True
    kind = type(error)
    return kind.__name__ == "InterruptException" and kind.__module__.lstrip("_") == "duckdb"


def stopped_by_interruption(error: BaseException) -> Stopped | None:
    """``error`` as the stop it stands for: a Stopped as it is, Python's own
    KeyboardInterrupt as SIGINT's, and DuckDB's word for a query a signal interrupted
    as the stop by the signal a handler here took, else SIGINT (Python's own handler,
    which records nothing). None for any other error."""
    if isinstance(error, Stopped):
        return error
    if isinstance(error, KeyboardInterrupt):
        return Stopped(signal.SIGINT)
    if interrupted_query(error):
        return Stopped(_last_signal or signal.SIGINT)
    return None


class StopRequest:
    """Whether a stop was asked for, and by which signal.

    Set from signal handlers, hence a plain attribute: ``threading.Event.set`` takes a
    lock that the interrupted code may be holding."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def set(self, signum: int = signal.SIGTERM) -> None:
        if self.signum is None:
            self.signum = signum

    def is_set(self) -> bool:
        return self.signum is not None

    def raise_if_set(self, summary: str = "") -> None:
        if self.signum is not None:
            raise Stopped(self.signum, summary)


@contextlib.contextmanager
def stop_requested_by_signals(*, raise_at_once: bool = False) -> Iterator[StopRequest]:
    """For the duration, SIGTERM and SIGINT set the returned request instead of ending
    the process; the code checks it between units of work and winds down.

    ``raise_at_once``: the first signal also raises :class:`Stopped` in the main thread,
    for work with nothing to put back that waits where no loop could check (a child's
    output). Later signals only set the request, so clean-up code is not cut short.

    Outside the main thread (a Prefect task may run in a worker thread) handlers cannot
    be installed: the request is never set, and children still stop with the process."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        global _last_signal
        _last_signal = signum
        first = not request.is_set()
        request.set(signum)
        if raise_at_once and first:
            raise Stopped(signum)

    previous = {signum: signal.signal(signum, handle) for signum in STOP_SIGNALS}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """For the duration, SIGTERM raises :class:`Stopped` where the program is, as SIGINT
    raises KeyboardInterrupt: a command with no stop-aware loop of its own (ingest, the
    metrics, the demo, the report) winds down the same way whichever comes, its
    transactions rolled back and its children stopped by the code that started them,
    and says which signal stopped it (exit 143), rather than dying where it stood.

    Only in the main thread, and only over SIGTERM's default: a handler someone else
    installed (a server's, a test harness's) is theirs. :func:`stop_requested_by_signals`
    takes over within its block and gives this back after."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        global _last_signal
        _last_signal = signum
        raise Stopped(signum)

    signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# What a stop signal interrupts at once (interrupting_on_stop): by token.
_interrupts: dict[int, Callable[[], None]] = {}
_tokens = itertools.count()
# The wakeup socket's write end while the watcher runs, and the wakeup fd it replaced.
_watching: tuple[socket.socket, int] | None = None


@contextlib.contextmanager
def interrupting_on_stop(interrupt: Callable[[], None]) -> Iterator[None]:
    """For the duration, SIGINT or SIGTERM calls ``interrupt`` at once, from a thread,
    whatever the main thread is doing: for work in C that a Python signal handler cannot
    reach until it returns (a DuckDB statement: ``con.interrupt``). DuckDB looks for the
    signal itself only when its main thread wakes; one waiting on its workers (a copy of
    the registry from PostgreSQL over ADBC, a big load on a busy machine) ran on to its
    end, 20 s and more after the signal. The handlers stay as they are (the stop is
    still raised or requested by them, as before); this only cuts the statement short.

    Through the signal module's wakeup fd, which Python's own C handler writes each
    signal's number to, for the signals with a Python handler (SIGINT's default, the
    handlers here): one already set (an asyncio loop's) gets every byte passed on. Only
    the main thread can set it; elsewhere (a Prefect task's thread) this does nothing."""
    global _watching
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    token = next(_tokens)
    _interrupts[token] = interrupt
    try:
        if _watching is None:
            _watching = _start_watching()
        yield
    finally:
        # The watcher stays while any connection is registered, whichever was opened
        # first: two open at once may close in either order (an ExitStack, a generator
        # holding one), and the one still running is still interrupted.
        del _interrupts[token]
        if not _interrupts and _watching is not None:
            watching, _watching = _watching, None
            _stop_watching(*watching)


def _start_watching() -> tuple[socket.socket, int]:
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    threading.Thread(
        target=_watch_signals, args=(reader, previous), name="interrupt-on-stop", daemon=True
    ).start()
    return writer, previous


def _stop_watching(writer: socket.socket, previous: int) -> None:
    """Give back the wakeup fd it replaced, unless someone set another since, and end the
    watcher (it reads the other end): the socket is closed whatever the first step
    raised (a second signal's Stopped, as a stop unwinds through here)."""
    try:
        current = signal.set_wakeup_fd(previous, warn_on_full_buffer=False)
        if current != writer.fileno():
            signal.set_wakeup_fd(current, warn_on_full_buffer=False)
    finally:
        writer.close()


def _watch_signals(reader: socket.socket, previous: int) -> None:
    global _last_signal
    with reader:
        while data := reader.recv(64):
            if previous != -1:
                with contextlib.suppress(OSError):
                    os.write(previous, data)
            stops = [signum for signum in data if signum in STOP_SIGNALS]
            if not stops:
                continue
            _last_signal = stops[-1]
            for interrupt in list(_interrupts.values()):
                with contextlib.suppress(Exception):  # a connection closed meanwhile
                    interrupt()


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back in this thread while children start. A child inherits
    the mask, so one that lands while it boots waits until :func:`as_child` has installed
    its handlers (rather than printing a KeyboardInterrupt traceback); the parent gets its
    own once the block ends, none lost.

    multiprocessing's spawn starts its resource tracker first and unblocks both signals on
    the way: start the tracker before holding them (``hold_for_multiprocessing``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def hold_for_multiprocessing() -> contextlib.AbstractContextManager[None]:
    """:func:`signals_held`, for starting multiprocessing's spawn children."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    return signals_held()


def as_child(parent_pid: int | None = None, *, wind_down: bool = True) -> StopRequest:
    """Call first thing in a child process: ignore SIGINT, stop on SIGTERM, and get
    SIGTERM when the parent dies.

    ``wind_down``: SIGTERM sets the returned request (the child's loop checks it and puts
    back what it holds); without, SIGTERM ends the child at once (it has nothing to save).
    ``parent_pid`` defaults to :data:`PARENT_PID_VARIABLE` from the environment."""
    if parent_pid is None:
        given = os.environ.get(PARENT_PID_VARIABLE, "")
        parent_pid = int(given) if given.isdigit() else os.getppid()
    request = StopRequest()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if wind_down:
        signal.signal(signal.SIGTERM, lambda signum, frame: request.set(signum))
    else:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not _die_with_parent():
        _watch_parent(parent_pid)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # see signals_held
    if os.getppid() != parent_pid:  # it died before the death signal was armed
        os.kill(os.getpid(), signal.SIGTERM)
    return request


def _die_with_parent() -> bool:
    """Ask Linux for SIGTERM when the parent dies; False where that cannot be had.

    The signal comes when the parent's thread that started us ends; a parent waits for
    its children in that thread, so that is when the parent is done or gone."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    """The portable fallback: a thread that sends us SIGTERM once we are orphaned."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_WATCH_PARENT_EVERY)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


Child = BaseProcess | Popen[Any]


def _running(child: Child) -> bool:
    if isinstance(child, Popen):
        return child.poll() is None
    return child.is_alive()


def stop_processes(children: Sequence[Child], grace: float) -> None:
    """SIGTERM every child still running, give them ``grace`` seconds to wind down, kill
    those still there, and reap them all: when this returns, none is left."""
    for child in children:
        if _running(child):
            child.terminate()
    deadline = time.monotonic() + grace
    while any(_running(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.02)
    for child in children:
        if _running(child):
            child.kill()
        if isinstance(child, Popen):
            child.wait()
        else:
            child.join()
