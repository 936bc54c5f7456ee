"""User-facing errors.

Every mistake a user can make (a bad size, a missing file, an unknown prompt word) raises a
subclass of :class:`ReelkitError`. The CLI prints its message as one line and exits with code 2;
library users catch it like any exception.
"""


class ReelkitError(Exception):
    """An error caused by the user's input, with a message fit to print as one line."""


class VideoReadError(ReelkitError):
    """A video file or frame folder is missing, empty, corrupt or too short."""


class PromptError(ReelkitError):
    """A prompt uses words outside the demo world's vocabulary or describes an impossible scene."""


class ShapeError(ReelkitError):
    """A size or frame count breaks the tensor conventions (sizes multiple of 8, 1+4k frames)."""
