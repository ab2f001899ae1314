"""docs/cli.md against the real command tree: every command documented, every option named, none invented."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click

from dramatiq_reliable.cli import cli
from tests.helpers import ROOT

DOC = ROOT / "docs" / "cli.md"


def leaves(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    """Every runnable command of the tree, by its path (``"dead replay"``)."""
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from leaves(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


def option_names(command: click.Command) -> set[str]:
    names: set[str] = set()
    for param in command.params:
        if isinstance(param, click.Option):
            names |= {n for n in (*param.opts, *param.secondary_opts) if n.startswith("--")}
    return names


def sections() -> dict[str, str]:
    """The text under each ``### `dramatiq-reliable COMMAND``` heading, by command path."""
    text = DOC.read_text()
    headings = [m.start() for m in re.finditer(r"^#{1,3} ", text, re.MULTILINE)] + [len(text)]
    out = {}
    for match in re.finditer(r"^### `dramatiq-reliable ([a-z -]+)`$", text, re.MULTILINE):
        end = next(h for h in headings if h > match.start())
        out[match.group(1)] = text[match.end() : end]
    return out


def test_every_command_has_a_section_and_no_other() -> None:
    assert set(sections()) == {path for path, _ in leaves(cli)}


def test_every_option_is_documented_in_its_section() -> None:
    documented = sections()
    for path, command in leaves(cli):
        missing = sorted(n for n in option_names(command) if f"`{n}" not in documented[path])
        assert not missing, f"docs/cli.md, {path}: options not documented: {missing}"


def test_no_section_names_an_option_its_command_lacks() -> None:
    documented = sections()
    global_options = option_names(cli) | {"--help"}
    for path, command in leaves(cli):
        named = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", documented[path]))
        invented = sorted(named - option_names(command) - global_options)
        assert not invented, f"docs/cli.md, {path}: names options the command lacks: {invented}"


def test_global_options_and_exit_codes_are_documented() -> None:
    from dramatiq_reliable import cli as module

    text = DOC.read_text()
    head = text[: text.index("## Exit codes")]
    for name in option_names(cli):
        assert f"`{name}" in head, name
    for name in ("RET_OK", "RET_FAILED", "RET_USAGE", "RET_CONNECT"):
        assert re.search(rf"^\| {getattr(module, name)} \| `{name}` \|", text, re.MULTILINE), name
