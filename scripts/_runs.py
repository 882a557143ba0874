"""Shared command line of the one-configuration-per-call tuning scripts
(``tune_warm_start.py``, ``tune_inpaint_seam.py``): each call appends one JSON row to
``OUT/runs.jsonl``; ``--report`` turns the rows into ``OUT/tuning.md``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def add_common(ap: argparse.ArgumentParser) -> None:
    """``--threads``, ``--out`` and ``--report``."""
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--report", action="store_true")


def report_if_asked(a: argparse.Namespace, report: Callable[[Path], str]) -> bool:
    """Creates ``a.out``; with ``--report`` writes and prints ``tuning.md`` and returns True."""
    a.out.mkdir(parents=True, exist_ok=True)
    if not a.report:
        return False
    (a.out / "tuning.md").write_text(report(a.out))
    print((a.out / "tuning.md").read_text())
    return True


def append_row(out: Path, row: dict, shown: object = None) -> None:
    """Appends ``row`` to ``out/runs.jsonl`` and prints ``shown`` (default: the row) as JSON."""
    with open(out / "runs.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row if shown is None else shown))
