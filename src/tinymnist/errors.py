"""The project's own error type: whatever derives from it is bad input, shown to the user as one line.

Anything else that escapes a command is a bug and keeps its traceback (`cli.main`). An interruption (Ctrl-C
or SIGTERM) is one line too, whenever it comes (`__main__.run` installs the handler before the slow imports).
"""

import signal
import sys


class TinyMnistError(Exception):
    """Bad input or an unusable file; the message is meant for the user as it is."""


def on_sigterm(signum, frame):
    raise KeyboardInterrupt(signal.SIGTERM)  # unwinds like Ctrl-C: temporary files are removed, locks released


def interrupted(e: KeyboardInterrupt, argv: list[str] | None = None) -> int:
    """Prints the one line for an interruption; returns the exit status (128 + the signal's number)."""
    sig = signal.SIGTERM if e.args == (signal.SIGTERM,) else signal.SIGINT
    words = sys.argv[1:] if argv is None else argv
    command = next((w for w in words if not w.startswith("-")), None)
    hint = " (an interrupted training run continues with --resume)" if command == "train" else ""
    print(f"tinymnist: interrupted{hint}", file=sys.stderr)  # the same line for Ctrl-C and SIGTERM
    return 128 + sig
