"""Plain `--help` for every guikv command and `python -m benchmarks.*` script: click's metavars
and one usage style.

Typer (0.2x) labels each value with its Python type, `<list[str]>`, `<bool>`, `<float>`, and writes
usage lines in three styles (`[SCREENSHOT]...`, `[benchmark]...`, `{targets}...`). guikv's help
reads the way command-line tools usually do instead:

- an option shows its own metavar (`--set KNOB=VALUE`, `--budgets LIST`), else click's name for its
  type (`TEXT`, `INTEGER`, `FLOAT`, `PATH`), and an on/off flag shows none;
- an argument shows its upper-case name, `...` when it repeats (`SCREENSHOT...`), and no type;
- the usage line is `guikv eval [OPTIONS] [BENCHMARK]...`: an optional argument in brackets, a
  required one bare (`guikv serve [OPTIONS] MODEL`).

Typer builds its own parameter objects, so the commands' classes below give each of them, when help
is asked for, a subclass that changes only how it is displayed (parsing is untouched).
`guikv_cli/app.py` puts every subcommand and the root on these classes, `benchmarks.flags.run_script`
every script. The module sits in `benchmarks` so that both can use it (imports point down only).
"""

from __future__ import annotations

from typing import Any

from typer import Context
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": "BOOLEAN"}
"""Click's metavar for a value of each Python type typer names (others are upper-cased: PATH)."""


def plain_type(label: str) -> str:
    """Typer's type label as click's metavar: `<int>` -> `INTEGER`, `<list[str]>` -> `TEXT`,
    `<path>` -> `PATH`; a choice (`<name|mtime>`) keeps its values."""
    name = label.strip("<>")
    if name.startswith("list[") and name.endswith("]"):
        name = name[len("list[") : -1]
    if "|" in name:
        return name
    return TYPE_NAMES.get(name, name.upper())


class PlainOption(TyperOption):
    """A typer option whose help shows its metavar, else click's type name, and nothing for a flag."""

    def display_type_rich(self, ctx: Context) -> str | None:
        """The value's placeholder in the help's type column."""
        if self.metavar is not None:
            return self.metavar
        if self.is_flag:
            return None
        shown = super().display_type_rich(ctx)
        return None if shown is None else plain_type(shown)


class PlainArgument(TyperArgument):
    """A typer argument shown by its upper-case name (with `...` when it repeats) and no type."""

    @property
    def plain_name(self) -> str:
        """`SCREENSHOT...`: the metavar or name, upper-cased, `...` for a repeated argument."""
        name = (self.metavar or self.name or "").upper().removesuffix("...")
        return name + ("..." if self.nargs != 1 else "")

    @property
    def display_name_raw(self) -> str:
        """The name in the help's argument panel and in error messages."""
        return self.plain_name

    def display_type_rich(self, ctx: Context) -> str | None:
        """No type column: the name says what the argument is."""
        return None

    def get_usage_pieces(self, ctx: Context) -> list[str]:
        """`MODEL` when required, `[SCREENSHOT]...` when not."""
        name = self.plain_name
        if self.required:
            return [name]
        bare = name.removesuffix("...")
        return [f"[{bare}]" + name[len(bare) :]]


def plain(param: Any) -> Any:
    """`param` displayed plainly: a typer option or argument gets the plain subclass (its class is
    swapped in place; the subclasses add no state), anything else is left as it is."""
    if isinstance(param, TyperArgument) and not isinstance(param, PlainArgument):
        param.__class__ = PlainArgument
        param.metavar = param.plain_name
    elif isinstance(param, TyperOption) and not isinstance(param, PlainOption):
        param.__class__ = PlainOption
    return param


class PlainHelpCommand(TyperCommand):
    """A typer command whose parameters show plain metavars in its help and usage line."""

    def get_params(self, ctx: Context) -> list[Any]:
        """Every parameter, `--help` included, displayed plainly."""
        return [plain(param) for param in super().get_params(ctx)]


class PlainHelpGroup(TyperGroup):
    """The root `guikv` group with the same plain help as its commands."""

    def get_params(self, ctx: Context) -> list[Any]:
        """Every parameter, `--help` included, displayed plainly."""
        return [plain(param) for param in super().get_params(ctx)]
