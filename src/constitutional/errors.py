"""The one error type users see: bad input, named precisely (file, line, field), never a traceback."""

from __future__ import annotations


class InputError(Exception):
    """A problem with what the user gave us (a file, a config key, a model name).

    The CLI prints `error: <message>` on one line and exits with code 2. The message names where
    the problem is: `file:line: field: what is wrong`.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.path, self.line, self.field = path, line, field
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        if field is not None:
            where += f"{field}: "
        super().__init__(where + message)
