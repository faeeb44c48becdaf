"""The one exception type a user can cause; the CLI prints its message and exits 1."""


class EdgertError(Exception):
    """A problem the user can fix: the message names the thing and what to do."""


class ModelFileError(EdgertError):
    """A model file that cannot be read: bad magic, truncated, corrupt, unsupported."""


class UnsupportedError(EdgertError):
    """A quant type, architecture or option this build does not support."""
