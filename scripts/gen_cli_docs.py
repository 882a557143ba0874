"""Write docs/cli.md: the `--help` text of every `medrecon` command, generated from click.

Usage: python scripts/gen_cli_docs.py [--check]
With --check, exit 1 when docs/cli.md is out of date (the tests run this).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from medrecon.cli import cli

OUT = Path(__file__).resolve().parents[1] / "docs" / "cli.md"

GUARANTEES = """## Your files: what every command guarantees

* **Inputs are never modified.** Images, masks, k-space, references, ground truths and prior
  files are only read. An output that is an input, lies inside an input folder, or is a folder
  holding an input is refused, with or without `--overwrite`.
* **No output without a complete result.** Results go to temporary names beside their target
  and are moved into place only when everything (the image, its std map, a report, a prior)
  is complete; on any failure or Ctrl-C nothing is left behind, not even a folder medrecon
  created.
* **Nothing is replaced without `--overwrite`**, in every command (`sr` ... `cs`, `demo`,
  `eval`, `priors import`, `train export`). Creation is exclusive: of two runs started together
  for one new output, one wins and the other exits 2; an output that appears while medrecon
  runs is left alone.
* **No foreign file is ever removed.** `--overwrite` replaces only what medrecon wrote: every
  image file it writes carries its mark in the header (NIfTI `descrip`, DICOM `Manufacturer`,
  PNG and TIFF `Software`), and an existing file without it is refused (a `.npy` has no room
  for one: remove it yourself); a DICOM series folder or a prior folder holding anything else
  is refused; `eval --out` replaces
  only its own report files and leaves every other file in the folder.
* **Checks come first.** Format, dimensionality (a volume cannot go into `.png`), inputs,
  existing outputs and a writable place are validated before any reconstruction starts.
* **No allocation a file cannot justify.** Sizes claimed by NIfTI, NumPy, DICOM and pickle
  headers are checked against the file before memory is allocated; at most
  `MEDRECON_MAX_VOXELS` (default 2^30) voxels are read at once. Devices, pipes, sockets and
  link loops are never read.
* **Results are ordinary files**, with the permissions any file you create gets (0644 under
  umask 022), ready to share or send to a PACS.
* **Lossy conversions are said**, one `Warning:` line each (colour or alpha dropped, extra
  pages ignored).

Exit codes: `0` success; `2` bad input, usage or environment (a one-line `Error: ...` that names
the problem, your path and the fix: a missing or corrupt file, a full disk, a read-only or
special folder, a symbolic-link loop ...); `1` internal error (a bug: `medrecon --debug ...`
shows the traceback); `130` interrupted (Ctrl-C), `143` terminated (SIGTERM), both leaving no
output behind. With `--log-format json` each error is one
JSON line `{"event": "error", "message": ..., "exit_code": ...}` and warnings are
`{"event": "warning", ...}` lines.
"""


def _walk(cmd: click.Command, path: list[str], ctx_parent: click.Context | None):
    # the command's own settings (show_default, -h) and those it inherits, as --help has them
    settings = {"terminal_width": 100, "max_content_width": 100, **cmd.context_settings}
    ctx = click.Context(cmd, info_name=path[-1], parent=ctx_parent, **settings)
    yield path, cmd.get_help(ctx)
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _walk(sub, [*path, name], ctx)


def render() -> str:
    parts = ["# `medrecon` command-line reference\n",
             "Generated from the click definitions by `python scripts/gen_cli_docs.py`; "
             "every command also answers `--help`.\n",
             GUARANTEES]
    for path, text in _walk(cli, ["medrecon"], None):
        parts.append(f"## `{' '.join(path)}`\n\n```text\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
