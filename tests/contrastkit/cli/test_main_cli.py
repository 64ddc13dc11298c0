"""The `contrastkit` dispatcher: usage, --help/-h, -V/--version, unknown commands, sub-command tables."""

from __future__ import annotations

import pytest

from contrastkit.cli.main import COMMANDS, main


@pytest.mark.parametrize("argv", [["--help"], ["-h"]])
def test_help_lists_commands_exit_0(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: contrastkit <command>")
    for name in COMMANDS:
        assert f"  {name} " in out
    assert "--verbose" in out


def test_no_command_prints_usage_and_exits_2(capsys):
    assert main([]) == 2
    assert "commands:" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag, capsys):
    from contrastkit import __version__

    assert main([flag]) == 0
    assert capsys.readouterr().out.strip() == f"contrastkit {__version__}"


def test_unknown_command_exit_2_with_suggestion(capsys):
    assert main(["scor"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'scor'" in err and "Did you mean 'score'?" in err and "Commands: generate" in err


def test_sub_command_tables(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "treg-heatmap" in out and "export" in out
    assert main(["train"]) == 2
    capsys.readouterr()
    assert main(["train", "exprt"]) == 2
    assert "Did you mean 'export'?" in capsys.readouterr().err
