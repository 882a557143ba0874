"""Exception types shared by every layer of medrecon.

User-facing problems (bad shapes, bad files, unknown options, missing weights) raise
:class:`MedreconInputError`, a :class:`ValueError`, whose message says what was got, what was
expected and how to fix it. The CLI maps it to exit code 2.
"""

from __future__ import annotations


class MedreconInputError(ValueError):
    """Bad user input: wrong shapes, unreadable files, unknown options, NaNs."""


class MissingWeightsError(MedreconInputError, FileNotFoundError):
    """Pretrained weights are not available locally (and cannot be downloaded offline)."""


class CheckpointError(MedreconInputError):
    """A network checkpoint is truncated, foreign, or holds objects we refuse to load."""


class MedreconWarning(UserWarning):
    """Something the user should know but that does not stop the run: a conversion that loses
    information (colour to grey, a dropped alpha channel, extra pages), a result the prior
    cannot fully support. The CLI prints each as one ``Warning: ...`` line."""


def find_in_chain(exc: BaseException | None, kind: type) -> BaseException | None:
    """The first exception of type ``kind`` in ``exc``'s chain (``exc`` itself, then its
    ``__cause__`` or ``__context__``, and so on); None when there is none. Frameworks wrap
    medrecon's errors (MONAI's config parser in ``RuntimeError`` s, Python's class creation
    too): their handlers look through the wrapping with this."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
