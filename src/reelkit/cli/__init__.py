"""The ``reelkit`` command line: one module per sub-app, all registered on one root app.

User mistakes (bad options, sizes, frame counts, files, prompt words) print one ``error:`` line and
exit with code 2; notices (such as a frame count rounded down to ``1 + 4k``) print as ``notice:``.

Layout: ``app`` (the root app), ``common`` (consoles, progress bars, output and number checks), one module per
sub-app or command group (``world``, ``video``, ``train``, ``vae``, ``generate``, ``calibrate``, ``evaluate``,
``bench``, ``mardini``) and ``main`` (the entry point that turns errors into one line).
"""

from reelkit.cli.app import app
from reelkit.cli.main import main

__all__ = ["app", "main"]
