"""Click parameter types shared by the command groups (``medrecon``, ``eval``, ``priors``).

:data:`SEED` reads ``--seed``, :class:`CoherenceWidth` ``--coherence``. :class:`InputPath` checks an input the way :func:`medrecon.io._paths.check_input_file` does,
so a symbolic-link loop, a device such as ``/dev/zero`` or an empty file is named as what it
is (exit 2) instead of click's generic "does not exist".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from medrecon.errors import MedreconInputError

__all__ = ["SEED", "CoherenceWidth", "InputPath"]

#: ``--seed``: 0 to ``2**63 - 1``, the seeds the solvers take
#: (:data:`medrecon.solvers._common.SEED_LIMIT`, not imported here to keep ``--help`` light).
SEED = click.IntRange(min=0, max=2**63 - 1)


class InputPath(click.ParamType):
    """An existing regular file or folder that medrecon may read.

    Args:
        dir_okay: Accept folders (DICOM series, image folders).
        file_okay: Accept files.
    """

    name = "path"

    def __init__(self, *, dir_okay: bool = True, file_okay: bool = True) -> None:
        self.dir_okay = dir_okay
        self.file_okay = file_okay

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        from medrecon.io._paths import check_input_file

        what = param.human_readable_name if param is not None else "input"
        try:
            p = check_input_file(value, what=f"{what}")
        except MedreconInputError as exc:
            self.fail(str(exc), param, ctx)
        if p.is_dir() and not self.dir_okay:
            self.fail(f"{str(p)!r} is a folder; expected a file.", param, ctx)
        if not p.is_dir() and not self.file_okay:
            self.fail(f"{str(p)!r} is a file; expected a folder.", param, ctx)
        return p


class OutputPath(click.Path):
    """``click.Path`` for outputs that refuses an empty value: ``-o ""`` became the current
    folder and the results went there, beside the inputs."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("is empty; give a path (use '.' for the current folder).", param, ctx)
        return super().convert(value, param, ctx)


class CoherenceWidth(click.ParamType):
    """``auto`` or a width in mm ``>= 0`` (``--coherence``)."""

    name = "auto|MM"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from medrecon.volume import check_coherence

        try:
            return check_coherence(value)
        except MedreconInputError as e:
            self.fail(str(e), param, ctx)
