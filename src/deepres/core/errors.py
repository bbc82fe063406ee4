"""The error types more than one layer raises or must recognise."""


class RunFailedError(RuntimeError):
    """A run that went wrong on valid input (the `deepres` command exits with 1; a user error exits with 2)."""


class NonFiniteLossError(RunFailedError):
    """Raised after train.nonfinite_patience non-finite losses in a row."""


class ChecksumError(ValueError):
    """A file whose checksum matches none of the accepted values."""


class DownloadError(OSError):
    """Every mirror failed for a file; the message lists each URL and why."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training at an optimizer step, after checkpoints/last was saved there.

    exit_code is the shell's convention for a process ended by that signal (128 + signal number: 130 for
    Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message, signum)  # both in args: the error pickles (study worker processes)
        self.signum = signum
        self.exit_code = 128 + signum

    def __str__(self) -> str:
        return self.args[0]
