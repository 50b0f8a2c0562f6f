"""Ctrl-C and SIGTERM that are never lost.

Python raises a signal's exception wherever the main thread is, and loses it when that is a finalizer
(``__del__``, a weakref callback: "Exception ignored in ...") or an extension module being imported (which
turns it into another error). ``benchmarks/interrupts.py`` saw both: a run that went on to exit 0 after a
Ctrl-C, and exit 1 with an import traceback. So the handlers here also record the signal, and
:func:`honour` raises it again at the next safe point (each round, the end of a command) when it was lost.
"""

from __future__ import annotations

import signal
import sys
from typing import Any, Callable

from byzlab.orchestrator.core.errors import Terminated

_received: list[int] = []


def install_ctrl_c() -> None:
    """Record every Ctrl-C, and raise KeyboardInterrupt as Python does; left alone where SIGINT is ignored
    (a shell script's background job). Python's report of an interrupt lost in a finalizer ("Exception
    ignored in ...", a traceback) is dropped: :func:`honour` raises it again."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_ctrl_c)
        sys.unraisablehook = _quiet_about_interrupts(sys.unraisablehook)


def on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM: recorded, then the run stops as on Ctrl-C and the process exits 143 (``Terminated``)."""
    _received.append(signum)
    raise Terminated()


def received() -> bool:
    return bool(_received)


def honour() -> None:
    """Raise the interrupt a signal asked for if its exception was lost on the way."""
    if signal.SIGTERM in _received:
        raise Terminated()
    if signal.SIGINT in _received:
        raise KeyboardInterrupt


def _on_ctrl_c(signum: int, frame: Any) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def _quiet_about_interrupts(report: Callable[[Any], None]) -> Callable[[Any], None]:
    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):
            report(unraisable)

    return hook
