"""The error types more than one layer raises or must recognise."""


class NonFiniteLossError(RuntimeError):
    """Raised after train.nonfinite_patience non-finite losses in a row."""


class ChecksumError(ValueError):
    """A file whose checksum matches none of the accepted values."""


class DownloadError(OSError):
    """Every mirror failed for a file; the message lists each URL and why."""
