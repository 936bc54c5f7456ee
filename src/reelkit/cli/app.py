"""The root ``reelkit`` app; each command module registers its commands or sub-app on it."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="reelkit: fast, memory-efficient video diffusion.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an internal error (exit code 1).")
                     ] = False,
) -> None:
    """reelkit: fast, memory-efficient video diffusion. Bad input is one 'error:' line and exit code 2."""
