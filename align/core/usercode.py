"""Calling the user's own Python (reward and preference functions): whatever it raises, also
`sys.exit()` and a `KeyboardInterrupt` it raises itself, becomes a one-line `AlignError`; only a
real Ctrl-C (a SIGINT that arrived while the code ran) stays an interrupt.

Without this a reward function that calls `sys.exit(0)` would end the whole run with exit
status 0, as if it had succeeded.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from align.core.errors import AlignError


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, else its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


@contextlib.contextmanager
def _sigint_seen() -> Iterator[list[bool]]:
    """Yields a flag set to [True] when SIGINT arrives during the block (main thread only: other
    threads never receive signals, so there every KeyboardInterrupt is raised by code)."""
    seen = [False]
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    previous = signal.getsignal(signal.SIGINT)

    def note(signum: int, frame: object) -> None:
        seen[0] = True
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, note)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def user_code(where: str, fix: str) -> Iterator[None]:
    """Run the block as the user's code: `AlignError` passes, anything else it raises (exit and
    self-raised interrupts included) becomes "`where` raised X: message; `fix`"."""
    with _sigint_seen() as sigint:
        try:
            yield
        except AlignError:
            raise
        except SystemExit as exc:
            raise AlignError(
                f"{where} called sys.exit({exc.code!r}) instead of returning; {fix}"
            ) from None
        except KeyboardInterrupt:
            if sigint[0]:
                raise
            raise AlignError(f"{where} raised KeyboardInterrupt itself; {fix}") from None
        except BaseException as exc:  # user code: one line naming it, not a traceback
            raise AlignError(
                f"{where} raised {type(exc).__name__}: {first_line(exc)}; {fix}"
            ) from None
