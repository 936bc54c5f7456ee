"""The entry point: user errors become one ``error:`` line and exit code 2."""

from __future__ import annotations

import logging
import sys

import typer

from reelkit.cli import (  # noqa: F401  (each module registers its commands on the root app)
    bench,
    calibrate,
    evaluate,
    generate,
    mardini,
    studio,
    train,
    tune,
    vae,
    video,
    world,
)
from reelkit.cli.app import app
from reelkit.cli.common import err_console
from reelkit.errors import ReelkitError

try:  # typer >= 0.29 vendors click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_errors



class _NoticeHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(f"notice: {record.getMessage()}", highlight=False, markup=False)


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning user errors into one line on stderr and exit code 2."""
    logger = logging.getLogger("reelkit")
    if not any(isinstance(h, _NoticeHandler) for h in logger.handlers):
        logger.addHandler(_NoticeHandler())
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv  # show the traceback of an unexpected failure
    argv = [a for a in argv if a != "--debug"]
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="reelkit", standalone_mode=False)
    except click_errors.NoArgsIsHelpError:  # `reelkit world` alone: typer has printed its help
        return 0
    except click_errors.UsageError as error:
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
        err_console.print(f"error: {_one_line(error.format_message())}{hint}", markup=False, highlight=False)
        return 2
    except ReelkitError as error:
        err_console.print(f"error: {_one_line(str(error))}", markup=False, highlight=False)
        return 2
    except typer.Abort:
        err_console.print("aborted", markup=False)
        return 130
    except typer.Exit as done:
        return done.exit_code
    except KeyboardInterrupt:
        err_console.print("error: interrupted", markup=False, highlight=False)
        return 130
    except MemoryError:
        err_console.print("error: out of memory; try a smaller --size, fewer frames, --slice or --chunk-frames",
                          markup=False, highlight=False)
        return 2
    except OSError as error:  # the machine's side: a full disk, a permission, a vanished file
        if debug:
            raise
        err_console.print(f"error: {_one_line(str(error)) or type(error).__name__}", markup=False, highlight=False)
        return 2
    except Exception as error:  # a bug in reelkit: say so, in one line, with the way to the traceback
        if debug:
            raise
        err_console.print(f"error: internal error ({type(error).__name__}: {_one_line(str(error))[:300]}); please "
                          "report it with the command line; --debug shows the traceback", markup=False,
                          highlight=False)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
