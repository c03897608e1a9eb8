"""`python -m tinymnist`: installs the signal handling before the slow imports (torch takes seconds), so
Ctrl-C or SIGTERM at any moment ends with one line, not a traceback or silence."""

import contextlib
import os
import sys

from .errors import held_signals, ignore_signals, install_handlers, interrupted, received  # standard library only


def run(argv: list[str] | None = None) -> int:
    install_handlers()
    try:
        with held_signals():  # a signal now is acted on once the imports are done, never lost inside them
            from .cli import main
    except KeyboardInterrupt as e:
        code = interrupted(e, argv)
    else:
        code = main(argv)
    ignore_signals()  # the command is over: a signal now would only interrupt the interpreter's shutdown
    if received() is not None:
        # the interpreter's shutdown puts the default actions back (a late signal would end the process by
        # it), and whatever was cleaned up has been: leave with our status now
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError):  # a reader gone (`| head`)
                stream.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(run())
