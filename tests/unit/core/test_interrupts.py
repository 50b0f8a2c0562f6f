"""Ctrl-C and SIGTERM that are never lost (orchestrator/core/interrupts.py): a signal whose exception Python
drops in a finalizer is raised again by ``honour``; a shell's ignored SIGINT stays ignored."""

import gc
import signal
import sys

import pytest

from byzlab.orchestrator.core import interrupts
from byzlab.orchestrator.core.errors import Terminated


@pytest.fixture
def reported(monkeypatch):
    """What Python's unraisable hook is given (exception types), with the process's SIGINT handler and hook
    restored afterwards and no signal recorded yet."""
    saved = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(interrupts, "_received", [])
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable.exc_type))
    yield seen
    signal.signal(signal.SIGINT, saved)


class _InterruptedWhileCollected:
    """A finalizer during which the Ctrl-C handler runs, as when the signal lands while GC runs ``__del__``."""

    def __del__(self):
        interrupts._on_ctrl_c(signal.SIGINT, None)


def test_a_ctrl_c_lost_in_a_finalizer_is_raised_at_the_next_safe_point(reported):
    interrupts.install_ctrl_c()
    interrupts.honour()  # nothing received: nothing raised
    _InterruptedWhileCollected()
    gc.collect()
    assert reported == []  # Python's "Exception ignored ... KeyboardInterrupt" report dropped
    assert interrupts.received()
    with pytest.raises(KeyboardInterrupt):
        interrupts.honour()


def test_sigterm_is_recorded_and_honoured_as_terminated(reported):
    with pytest.raises(Terminated) as raised:
        interrupts.on_sigterm(signal.SIGTERM, None)
    assert raised.value.code == 143
    with pytest.raises(Terminated):
        interrupts.honour()


def test_an_ignored_sigint_stays_ignored(reported):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    interrupts.install_ctrl_c()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_other_unraisable_errors_are_still_reported(reported):
    interrupts.install_ctrl_c()

    class Broken:
        def __del__(self):
            raise ValueError("a real bug")

    Broken()
    gc.collect()
    assert reported == [ValueError]
