"""Start-up: a command line imports only the command it names; ``--help`` none of them."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.main import get_group

from pgshift.cli.main import SUMMARIES, build_app, main


def _first_paragraph(text: str | None) -> str:
    return " ".join((text or "").split("\n\n")[0].split())


def test_summaries_match_every_command_help() -> None:
    """``pgshift --help`` lists from SUMMARIES: it must say what each command says."""
    commands = get_group(build_app()).commands
    assert list(commands) == list(SUMMARIES)
    for name, cmd in commands.items():
        assert _first_paragraph(cmd.help).startswith(SUMMARIES[name]), name


def test_help_lists_every_command_without_importing_them() -> None:
    code = subprocess.run(
        [sys.executable, "-c",
         "import sys; from pgshift.cli.main import main; code = main(['--help']); "
         "heavy = [m for m in ('psycopg', 'sqlglot', 'pgshift.cli.migrate', 'pgshift.migrate') "
         "if m in sys.modules]; print('HEAVY', heavy); sys.exit(code)"],
        capture_output=True, text=True, check=False, timeout=60)
    assert code.returncode == 0, code.stderr
    assert "HEAVY []" in code.stdout
    for name in SUMMARIES:
        assert f"  {name} " in code.stdout


def test_a_command_imports_only_its_own_module() -> None:
    out = subprocess.run(
        [sys.executable, "-c",
         "import sys; from pgshift.cli.main import build_app; build_app(['--debug', 'verify']); "
         "print(sorted(m for m in sys.modules if m.startswith('pgshift.cli.')))"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    assert "pgshift.cli.verify" in out
    assert "pgshift.cli.migrate" not in out and "pgshift.cli.sync" not in out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == 2
    assert "No such command" in capsys.readouterr().err
