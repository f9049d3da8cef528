"""Options that take one value refuse to be given twice.

Click keeps the last of `--device dev-a --device dev-b` and drops the first without a word: a
deploy meant for two devices went to one. Every `edgepilot` command is a `StrictCommand` (see
`refuse_repeated_options`): an option given more than once is a usage error (exit code 2,
naming it and how often it was given), unless it takes a list (`--param`, repeatable by design)
or is a flag or a counter (`--json --json` means the same).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import typer
from typer.core import TyperCommand, TyperOption


def _single_valued(param: Any) -> bool:
    return (
        isinstance(param, TyperOption)
        and not param.multiple
        and not param.is_flag
        and not param.count
    )


class StrictCommand(TyperCommand):
    """A command whose single-valued options may each be given once."""

    # ctx: click's Context (typer vendors click in some releases: no import names it for all)
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and not ctx.resilient_parsing:
            _, _, order = self.make_parser(ctx).parse_args(args=list(args))
            seen = Counter(order)
            repeated = [p for p, n in seen.items() if n > 1 and _single_valued(p)]
            if repeated:
                named = "; ".join(f"{'/'.join(p.opts)} was given {seen[p]} times" for p in repeated)
                each = "each takes" if len(repeated) > 1 else "it takes"
                ctx.fail(f"{named}: {each} one value (the earlier ones would be ignored)")
        return super().parse_args(ctx, args)


def refuse_repeated_options(app: typer.Typer) -> None:
    """Make every command of `app` and of its sub-apps a StrictCommand (those registered so
    far: call it once every command is)."""
    for command in app.registered_commands:
        if command.cls in (None, TyperCommand):  # the default (None in older typer releases)
            command.cls = StrictCommand
    for group in app.registered_groups:
        if group.typer_instance is not None:
            refuse_repeated_options(group.typer_instance)
