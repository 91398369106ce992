"""One exception type for every problem the user can fix (bad data, wrong board, bad model).

The CLI prints these as one clear line and exits 2; anything else is a bug and keeps its traceback.
"""


class DsmnError(Exception):
    """A user-facing error whose message names the file, tensor, op or board at fault."""
