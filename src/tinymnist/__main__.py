"""`python -m tinymnist`: installs the signal handling before the slow imports (torch takes seconds), so
Ctrl-C or SIGTERM at any moment ends with one line, not a traceback or silence."""

import signal
import sys


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


def run(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        from .cli import main
    except KeyboardInterrupt as e:
        return interrupted(e, argv)
    return main(argv)


if __name__ == "__main__":
    sys.exit(run())
