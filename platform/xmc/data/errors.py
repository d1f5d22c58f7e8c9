"""The one error type for bad input data: it names the file, the 1-based line and what was expected."""

from __future__ import annotations

import os


class DataError(ValueError):
    """Invalid input data. ``str(err)`` is a single line: ``FILE:LINE: what is wrong (what was expected)``."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str):
        self.path = str(path)
        self.line = line
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"

    def __reduce__(self):
        # Ray sends a worker's error to the driver pickled: rebuild it from its fields, not from args
        return DataError, (self.path, self.line, self.message)
