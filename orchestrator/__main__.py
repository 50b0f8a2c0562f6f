"""The ``byzlab`` command (``python -m byzlab.orchestrator``): the CLI, with every Ctrl-C (and SIGTERM)
ending the process with its exit code, never a traceback or a crash.

Importing the CLI loads torch and Ray's and MLflow's dependencies (seconds): a Ctrl-C then would otherwise
be a KeyboardInterrupt traceback, or, inside an extension module's initialisation, another error
(``orchestrator/core/interrupts.py``). Once a command has handled an interrupt (the run marked interrupted,
the line printed, exit 130 or 143), the process ends at once (``os._exit``): a library interrupted mid-way
(Ray's start-up) can crash in its exit-time teardown (seen once in 40 Ctrl-C's: exit -11 after the line),
and interpreter teardown has nothing left to save.
"""

import os
import sys

from byzlab.orchestrator.core import interrupts

INTERRUPTED = (130, 143)  # 128 + SIGINT, 128 + SIGTERM


def _end_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    interrupts.install_ctrl_c()
    try:
        from byzlab.orchestrator.cli import app
    except BaseException:
        if not interrupts.received():
            raise
        print("interrupted while starting; nothing was written", file=sys.stderr)
        _end_now(130)
    try:
        app(prog_name="byzlab")
    except SystemExit as exit_:
        if exit_.code in INTERRUPTED:
            _end_now(exit_.code)
        raise


if __name__ == "__main__":
    main()
