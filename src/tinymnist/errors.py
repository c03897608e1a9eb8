"""The project's own error type: whatever derives from it is bad input, shown to the user as one line.

Anything else that escapes a command is a bug and keeps its traceback (`cli.main`). An interruption (Ctrl-C
or SIGTERM) is one line too, whenever it comes and however many come (`__main__.run` installs the handlers
before the slow imports and holds the signals while they run).
"""

import signal
import sys
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_got = {"signals": set(), "hold": False}  # the signals this command received; holding them (the imports)?


class TinyMnistError(Exception):
    """Bad input or an unusable file; the message is meant for the user as it is."""


def interruption(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt(signal.SIGTERM) if signum == signal.SIGTERM else KeyboardInterrupt()


def on_signal(signum, frame):
    """The first Ctrl-C or SIGTERM unwinds like Ctrl-C (temporary files are removed, locks released), or, while
    the signals are held, is only noted. Every later one is noted and ignored until the process ends: landing
    in the cleanup, it would cut it short (a traceback, a death by the signal, a lock left behind)."""
    first = not _got["signals"]
    ignore_signals()
    _got["signals"].add(signum)
    if first and not _got["hold"]:
        raise interruption(received())


def _ignore(signum, frame):
    _got["signals"].add(signum)


def ignore_signals() -> None:
    """From now on Ctrl-C and SIGTERM are only noted. A Python function, not SIG_IGN: a signal already on its way
    to Python's handler would print "OSError: Signal 15 ignored due to race condition"."""
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _ignore)


def received() -> int | None:
    """The signal that interrupted this command, if one did (also when something swallowed its KeyboardInterrupt):
    SIGTERM if one came, as the system asked the process to stop, whichever Python handled first (it handles
    signals that arrive together in the order of their numbers); else SIGINT."""
    signals = _got["signals"]
    return signal.SIGTERM if signal.SIGTERM in signals else signal.SIGINT if signals else None


def install_handlers() -> dict | None:
    """Ctrl-C and SIGTERM go to `on_signal` from now on; returns the handlers they replaced, for
    `restore_handlers` (None when there is nothing to do: not the main thread, or ours already)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    if all(h is on_signal for h in previous.values()):
        return None
    _got["signals"] = set()
    for s in SIGNALS:
        signal.signal(s, on_signal)
    return previous


def restore_handlers(previous: dict | None) -> None:
    """Puts back the handlers `install_handlers` replaced, and forgets the signals received meanwhile."""
    if previous is not None:
        _got["signals"] = set()
    for s, handler in (previous or {}).items():
        signal.signal(s, handler)


@contextmanager
def held_signals():
    """Around slow imports: Ctrl-C or SIGTERM is only noted while they run, and raised as KeyboardInterrupt once
    they are done. Raised inside a C extension's initialisation (numpy's, while torch imports it), it is
    swallowed there, or leaves the module half-loaded ("cannot load module more than once per process")."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not on_signal:
        yield  # not our handlers (in-process use): nothing to hold
        return
    _got["hold"] = True
    try:
        yield
    finally:
        _got["hold"] = False
    if received() is not None:
        raise interruption(received())


def interrupted(e: KeyboardInterrupt, argv: list[str] | None = None) -> int:
    """Prints the one line for an interruption; returns the exit status (128 + the signal's number)."""
    # the signal our handler saw, if it saw one: a library may have raised a KeyboardInterrupt of its own instead
    sig = received() or (signal.SIGTERM if e.args == (signal.SIGTERM,) else signal.SIGINT)
    words = sys.argv[1:] if argv is None else argv
    command = next((w for w in words if not w.startswith("-")), None)
    hint = " (an interrupted training run continues with --resume)" if command == "train" else ""
    print(f"tinymnist: interrupted{hint}", file=sys.stderr)  # the same line for Ctrl-C and SIGTERM
    return 128 + sig
