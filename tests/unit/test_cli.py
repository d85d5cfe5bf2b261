"""The `flywheel` console script dispatches to every job module it lists."""

import importlib

from jobs.cli import COMMANDS, main


def test_every_command_has_a_main():
    for name, (module, help_) in COMMANDS.items():
        assert callable(importlib.import_module(module).main), name
        assert help_, name


def test_usage_lists_commands_and_unknown_is_an_error(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name}" in out for name in COMMANDS)
    assert main(["nope"]) == 2
