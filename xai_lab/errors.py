"""The one exception type for bad user input.

Anything the user can fix (a config key, a path, a corrupt image, a missing
checkpoint) raises :class:`UserError` with a message of one line. The CLI turns it
into that line on stderr and exit code 2; any other exception is a bug (exit 1).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal: Ctrl-C (SIGINT, exit 130) or SIGTERM (exit 143), after saving what is done."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.message, self.exit_code = message, exit_code


class RunStopped(KeyboardInterrupt):
    """:func:`xai_lab.train.fit` stopped by Ctrl-C or SIGTERM: its run folder, and the epoch of the last checkpoint
    written there (0: none), which ``train --resume`` continues from."""

    def __init__(self, run_dir, epoch: int):
        super().__init__(f"stopped in {run_dir} after the checkpoint of epoch {epoch}")
        self.run_dir, self.epoch = run_dir, epoch
