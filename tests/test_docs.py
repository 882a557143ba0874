"""The generated CLI reference names every command and option that exists."""

from __future__ import annotations

from pathlib import Path

import click

from medrecon.cli import cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _commands(cmd: click.Command, path: tuple[str, ...]):
    yield path, cmd
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            yield from _commands(cmd.get_command(ctx, name), (*path, name))


def test_cli_reference_is_complete():
    text = DOC.read_text()
    for path, cmd in _commands(cli, ("medrecon",)):
        heading = f"## `{' '.join(path)}`"
        assert heading in text, f"{heading} missing: run python scripts/gen_cli_docs.py"
        section = text.split(heading, 1)[1].split("\n## ", 1)[0]
        for param in cmd.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert opt in section, (f"{opt} of {' '.join(path)} missing from docs/cli.md: "
                                            "run python scripts/gen_cli_docs.py")


def test_cli_reference_is_what_help_prints():
    """docs/cli.md was rendered without each command's context settings: eval's and
    eval-scans' defaults and the -h alias were missing, and the check compared the file with
    the same rendering. Every section is now the command's real --help output (taken in a
    fresh interpreter: click keeps a command's help option from the first context that asked,
    and other tests run `priors` on its own)."""
    import json
    import subprocess
    import sys

    code = (
        "import json\n"
        "from click.testing import CliRunner\n"
        "from medrecon.cli import cli\n"
        "from tests.test_docs import _commands\n"
        "out = {}\n"
        "for path, _ in _commands(cli, ('medrecon',)):\n"
        "    r = CliRunner().invoke(cli, [*path[1:], '--help'], prog_name='medrecon',\n"
        "                           terminal_width=100, max_content_width=100)\n"
        "    out[' '.join(path)] = [r.exit_code, r.output]\n"
        "print(json.dumps(out))\n")
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=root, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    text = DOC.read_text()
    for name, (code_, output) in json.loads(res.stdout.splitlines()[-1]).items():
        assert code_ == 0, output
        section = text.split(f"## `{name}`", 1)[1].split("\n## ", 1)[0]
        assert output.strip() in section, (f"{name}: docs/cli.md is not its --help; run "
                                           "python scripts/gen_cli_docs.py")
