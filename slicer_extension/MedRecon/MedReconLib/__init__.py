"""Implementation of the MedRecon Slicer module that does not need the Slicer GUI.

* :mod:`.runner`  builds the ``medrecon`` command line and runs it as a child process, parsing
  its JSON progress stream (pure Python).
* :mod:`.mrml_io` moves volumes and masks between MRML nodes and NIfTI files (MRML API only, so
  it runs in Slicer and with the ``slicer-core`` wheel).
* :mod:`.logic`   ties both together: node in -> process -> new node out, with cancel.

The MRML-facing names (:class:`ReconstructionLogic`, ...) are imported on first use, so the
pure-Python parts load without ``slicer``/``vtk``.
"""

from .errors import MedreconInputError, ReconstructionCancelled, ReconstructionError
from .runner import (
    DEFAULT_PRIOR,
    DEVICES,
    METHODS,
    SHIPPED_PRIORS,
    TASK_LABELS,
    TASKS,
    CliProcess,
    Event,
    ReconstructionParameters,
    parse_line,
    python_module_command,
)

__all__ = [
    "DEFAULT_PRIOR",
    "DEVICES",
    "METHODS",
    "SHIPPED_PRIORS",
    "TASKS",
    "TASK_LABELS",
    "CliProcess",
    "Event",
    "MedreconInputError",
    "ReconstructionCancelled",
    "ReconstructionError",
    "ReconstructionLogic",
    "ReconstructionParameters",
    "ReconstructionResult",
    "ReconstructionRun",
    "parse_line",
    "python_module_command",
]

_LAZY = {"ReconstructionLogic", "ReconstructionResult", "ReconstructionRun"}


def __getattr__(name):
    if name in _LAZY:
        from . import logic

        return getattr(logic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
