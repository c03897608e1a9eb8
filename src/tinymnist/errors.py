"""The project's own error type: whatever derives from it is bad input, shown to the user as one line.

Anything else that escapes a command is a bug and keeps its traceback (`cli.main`).
"""


class TinyMnistError(Exception):
    """Bad input or an unusable file; the message is meant for the user as it is."""
