"""Errors a user can cause and fix, and the planned stop of a run."""


class UserError(Exception):
    """A mistake the user can fix; the message is one line naming the file/field and the fix."""


class Interrupted(Exception):
    """A run stopped early with nothing lost (a checkpoint holds every step it trained): by a
    signal (SIGTERM, Ctrl-C) or at config.train.stop_after. The message says how to resume;
    `exit_code` is the CLI's (128 + the signal; 0 at stop_after)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
