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


def _walk(cmd: click.Command, path: list[str], ctx_parent: click.Context | None):
    ctx = click.Context(cmd, info_name=" ".join(path), parent=None, terminal_width=100,
                        max_content_width=100)
    yield path, cmd.get_help(ctx)
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _walk(sub, [*path, name], ctx)


def render() -> str:
    parts = ["# `medrecon` command-line reference\n",
             "Generated from the click definitions by `python scripts/gen_cli_docs.py`; "
             "every command also answers `--help`. Exit codes: 0 success, 2 bad input or usage "
             "(a one-line message naming the problem), 1 internal error.\n"]
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
