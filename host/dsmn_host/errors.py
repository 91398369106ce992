"""One exception type for every problem the user can fix (bad data, wrong board, bad model).

The CLI prints these as one clear line and exits 2; anything else is a bug and keeps its traceback.
"""


class DsmnError(Exception):
    """A user-facing error whose message names the file, tensor, op or board at fault."""


class ModelMismatch(DsmnError):
    """The board runs another model than the card names (its HELLO's sha256 differs).

    A type of its own because recovery must not retry it: reopening a port brings the same
    firmware back, so `dsmn_host.link.recovery` re-raises this one and retries every other error."""
