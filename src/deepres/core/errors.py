"""The error types more than one layer raises or must recognise."""


class RunFailedError(RuntimeError):
    """A run that went wrong on valid input (the `deepres` command exits with 1; a user error exits with 2)."""


class NonFiniteLossError(RunFailedError):
    """Raised after train.nonfinite_patience non-finite losses in a row."""


class ChecksumError(ValueError):
    """A file whose checksum matches none of the accepted values."""


class DownloadError(OSError):
    """Every mirror failed for a file; the message lists each URL and why."""
