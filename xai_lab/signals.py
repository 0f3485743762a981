"""SIGTERM stops a command the way Ctrl-C does, and the exit code says which one came (130 or 143).

:class:`StopSignals` hands SIGTERM to whichever SIGINT handler is installed at that moment: Ray Tune's while a
sweep's trials run (a graceful stop that saves the experiment), the fan-out's flag while reports run
(``sweeps.fanout._ctrl_c_flag``), Python's (``KeyboardInterrupt`` where the code is) anywhere else, a single
run's training loop included. The command then says what was saved and how to carry on
(:meth:`StopSignals.interrupted`).
"""

from __future__ import annotations

import signal

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
