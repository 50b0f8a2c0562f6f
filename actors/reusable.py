"""What lets a sweep's next trial borrow a client or server actor instead of starting a new process
(actors/pool.py)."""

from __future__ import annotations

from typing import Any


class Reusable:
    """A worker class whose actor can be re-initialised for another run."""

    def reset(self, *args: Any) -> None:
        """Re-initialise from ``__init__``'s arguments: every attribute of the previous run is dropped first,
        so the actor is what a new one built from ``args`` would be."""
        self.__dict__.clear()
        self.__init__(*args)  # type: ignore[misc]
