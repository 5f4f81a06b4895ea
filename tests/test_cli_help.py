"""Every command's ``--help`` ends its description with one example, and the example parses.

The list of commands is the dispatcher's own (``_COMMANDS``), so a new command without an
example fails here. Parsing the example with the command's own options (no invocation) catches
an example left behind when an option is renamed.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from npdecode.cli import _COMMANDS, cli, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_help_shows_one_example_that_parses(name, capsys, monkeypatch):
    main([name, "--help"])  # returns (exit status 0)
    shown = capsys.readouterr().out
    examples = re.findall(rf"^\s*Example:\s+(npdecode {name}\b.*)$", shown, flags=re.MULTILINE)
    assert len(examples) == 1, f"npdecode {name} --help: expected one 'Example: npdecode {name} ...' line"
    monkeypatch.chdir(ROOT)  # examples name files of this checkout (configs/...)
    command = cli.get_command(click.Context(cli), name)
    command.make_context(name, shlex.split(examples[0])[2:])  # raises click.UsageError on a stale option
