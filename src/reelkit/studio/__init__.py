"""reelkit studio: a Gradio page to generate, accelerate and compare (``reelkit studio``).

>>> from reelkit.studio import build_app
>>> app = build_app()          # a gradio.Blocks; app.launch() serves it (127.0.0.1 unless told otherwise)
"""

from reelkit.studio.app import build_app, launch

__all__ = ["build_app", "launch"]
