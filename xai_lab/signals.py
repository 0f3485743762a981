"""SIGTERM stops a command the way Ctrl-C does, and the exit code says which one came (130 or 143).

:class:`StopSignals` hands SIGTERM to whichever SIGINT handler is installed at that moment: Ray Tune's while a
sweep's trials run (a graceful stop that saves the experiment), the fan-out's flag while reports run
(``sweeps.fanout._ctrl_c_flag``), Python's (``KeyboardInterrupt`` where the code is) anywhere else, a single
run's training loop included. The command then says what was saved and how to carry on
(:meth:`StopSignals.interrupted`).

:func:`held_stop` keeps a stop out of a few lines that must finish together, such as writing a checkpoint's
files and noting which epoch they hold: the signal takes effect when they are done.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from xai_lab.errors import Interrupted


class StopSignals:
    """Install the SIGTERM handler; ``exit_code`` is 143 once SIGTERM came, else 130 (Ctrl-C)."""

    def __init__(self):
        self.exit_code = 130
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum, frame) -> None:
        self.exit_code = 143
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler) and handler is not signal.default_int_handler:
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    @property
    def name(self) -> str:
        return "SIGTERM" if self.exit_code == 143 else "interrupted (Ctrl-C)"

    def interrupted(self, resume: str, saved: str = "what finished is saved") -> Interrupted:
        """The exception the CLI turns into one line and the exit code: ``<signal>: <saved>; carry on with: ...``."""
        return Interrupted(f"{self.name}: {saved}; carry on with: {resume}", self.exit_code)


@contextmanager
def held_stop() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them to the handlers installed before.

    The block's writes and the state that says what they hold never part: a signal that comes inside it
    is raised again when it ends, so it reaches whatever handles it outside (``KeyboardInterrupt``,
    :class:`StopSignals`, the fan-out's flag) or is ignored where it was ignored before (a job started in
    the background ignores SIGINT, and SIGTERM still stops it). When the block raises, its exception
    goes on and a held signal is dropped: the run stops either way. Outside the main thread (a Ray
    trial's), where signals are not delivered to Python code, the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    previous = {s: handler for s, handler in previous.items() if handler is not None}  # None: not set from Python
    for s in previous:
        signal.signal(s, lambda signum, frame: came.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for signum in dict.fromkeys(came):
        signal.raise_signal(signum)
