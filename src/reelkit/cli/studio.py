"""``reelkit studio``: the web page (Gradio), bound to 127.0.0.1 unless told otherwise."""

from __future__ import annotations

from typing import Annotated

import typer

from reelkit.cli.app import app
from reelkit.cli.common import console
from reelkit.errors import ReelkitError


@app.command()
def studio(
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 serves the network (no authentication).")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    model: Annotated[str | None, typer.Option(help="Default model: teacher, student or a pipeline folder.")] = None,
    max_queue: Annotated[int, typer.Option(help="Requests allowed to wait behind the running generation.")] = 4,
) -> None:
    """Open the studio: generate, accelerate and compare in a browser page."""
    if not 1 <= port <= 65535:
        raise ReelkitError(f"--port must lie in 1 .. 65535, got {port}")
    if not 1 <= max_queue <= 1000:
        raise ReelkitError(f"--max-queue must lie in 1 .. 1000, got {max_queue}")
    if model is not None and model not in ("teacher", "student"):
        from pathlib import Path

        if not (Path(model) / "model_index.json").is_file():
            raise ReelkitError(f"{model}: not a text-to-video pipeline folder (no model_index.json)")
    from reelkit.studio import launch

    console.print(f"reelkit studio on http://{host}:{port} (Ctrl+C stops it)")
    try:
        launch(host, port, model, block=True, max_queue=max_queue)
    except OSError as error:
        raise ReelkitError(f"cannot serve on {host}:{port} ({error})") from None
