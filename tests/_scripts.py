"""The repository's scripts (bench/, scripts/) as modules, for tests of their own logic."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relpath: str, *, register: bool = False) -> ModuleType:
    """Import ``ROOT / relpath`` as a module named after its file.

    Args:
        relpath: e.g. ``"bench/bench_volume.py"``.
        register: also put it in ``sys.modules`` (for scripts whose dataclasses or pickles
            look their module up by name).
    """
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    if register:
        sys.modules.setdefault(path.stem, mod)
    spec.loader.exec_module(mod)
    return mod
