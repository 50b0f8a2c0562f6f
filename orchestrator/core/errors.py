"""The errors byzlab reports to a user as one line (the CLI prints them without a traceback)."""


class ConfigError(ValueError):
    """A configuration problem, phrased as one line for the user."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not on disk and downloading was not allowed."""


class RunAbortedError(RuntimeError):
    """A run that stopped for a reason outside the config (its actors kept dying), phrased as one line
    that says how to continue it."""


class Terminated(SystemExit):
    """SIGTERM reached the driver: the run stops as on Ctrl-C, resumable, and the process exits 143
    (128 + SIGTERM), as a shell or a scheduler expects."""

    def __init__(self) -> None:
        super().__init__(143)
