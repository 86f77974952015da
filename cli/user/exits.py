"""The exit codes of the user commands (docs/cli.md, "Exit codes"), and the one error they raise for what a user
must fix: printed as one line, never a traceback."""

from __future__ import annotations

OK = 0
API_ERROR = 1  # the API refused the request (its error printed with code and param), or could not be reached
USAGE = 2  # a bad option or argument (typer's own), or a spec file that cannot be read
CONFIG = 3  # no URL/key configured, an unknown profile, an unreadable profile file, a key the API refuses
FILE_INVALID = 4  # `files upload`: the file did not pass validation (status `error`)
JOB_FAILED = 5  # `jobs watch`, `jobs create --watch`: the job ended `failed`
JOB_CANCELLED = 6  # ... ended `cancelled`
INTERRUPTED = 130  # Ctrl-C


class UserError(Exception):
    """Something the user must fix, said in one line; `code` is the exit code."""

    def __init__(self, message: str, code: int = API_ERROR) -> None:
        super().__init__(message)
        self.message, self.code = message, code
