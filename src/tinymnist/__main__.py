"""`python -m tinymnist`: installs the signal handling before the slow imports (torch takes seconds), so
Ctrl-C or SIGTERM at any moment ends with one line, not a traceback or silence."""

import os
import signal
import sys

from .errors import interrupted, on_sigterm  # the standard library only: quick to import


def run(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        from .cli import main
    except KeyboardInterrupt as e:
        code = interrupted(e, argv)
        # modules interrupted half-way through their import (torch's native parts) can turn the interpreter's
        # own shutdown into a death by the signal: flush and leave with our status instead
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return main(argv)


if __name__ == "__main__":
    sys.exit(run())
