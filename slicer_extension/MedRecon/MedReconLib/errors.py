"""Error types of the Slicer module.

When medrecon is installed in Slicer's Python, :class:`MedreconInputError` *is*
``medrecon.errors.MedreconInputError``, so callers can catch one class everywhere. Before
medrecon is installed (the module must load to offer the installation) a local class with the
same name and base (:class:`ValueError`) stands in.
"""

from __future__ import annotations

try:  # medrecon is optional here: the module has to load before it is installed.
    from medrecon.errors import MedreconInputError
except ImportError:  # pragma: no cover - exercised only without medrecon

    class MedreconInputError(ValueError):  # type: ignore[no-redef]
        """Bad user input: the message says what was got, what was expected and how to fix it."""


class ReconstructionError(RuntimeError):
    """The ``medrecon`` process failed for a reason other than bad input.

    Attributes:
        returncode: Exit status of the process (``None`` when it never ran).
        log_tail: The last lines the process printed, for the error report.
    """

    def __init__(self, message: str, *, returncode: int | None = None, log_tail: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.log_tail = log_tail


class ReconstructionCancelled(RuntimeError):
    """Raised by blocking calls when the run was cancelled; no node was created."""


__all__ = ["MedreconInputError", "ReconstructionCancelled", "ReconstructionError"]
