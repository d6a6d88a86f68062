"""docs/cli.md holds every command and option: its reference part is generated from the parsers and must be current."""
from __future__ import annotations

from importlib.metadata import distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_console_script_is_in_the_reference():
    from autoorgan.cli.reference import COMMANDS
    scripts = {ep.name for ep in distribution("autoorgan").entry_points if ep.group == "console_scripts"}
    assert scripts == set(COMMANDS)


def test_docs_cli_md_is_current_and_names_every_option():
    from autoorgan.cli.reference import BEGIN, COMMANDS, END, parser_of, render
    doc = (ROOT / "docs" / "cli.md").read_text()
    generated = doc[doc.index(BEGIN):doc.index(END) + len(END)] + "\n"
    assert generated == render(), "docs/cli.md is out of date: python -m autoorgan.cli.reference --write docs/cli.md"
    for command in COMMANDS:
        section = generated.split(f"## `{command}`")[1].split("\n## ")[0]
        for action in parser_of(command)._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}`" in section, (command, option)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("pip install -e"))
    assert f'. .venv/bin/activate && {command}' in readme
