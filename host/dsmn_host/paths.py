"""Checks for the files a user names on the command line, made before any work is done.

A stage that finds out at the end that it cannot write its result has wasted the run (or left
half of it behind), and numpy's own errors on a bad .npy are tracebacks; these say up front, in
one line, which path is wrong and why.
"""

import os
from pathlib import Path

from dsmn_host.errors import DsmnError


def output_file(path, what="output file", suffix=None, create_parent=True):
    """`path` as a Path that can be written (with `suffix` appended if it lacks it, as numpy's
    savez would do silently): its directory exists or is created, and it is not a directory."""
    path = Path(path)
    if suffix and path.suffix != suffix:
        path = path.with_name(path.name + suffix)
    if path.is_dir():
        raise DsmnError(f"{path}: is a directory; the {what} must be a file path")
    parent = path.parent
    for p in (parent, *parent.parents):  # the nearest existing ancestor must be a directory
        if p.exists():
            if not p.is_dir():
                raise DsmnError(f"{path}: cannot write the {what}: {p} is a file, not a directory")
            break
    if not parent.exists():
        if not create_parent:
            raise DsmnError(f"{path}: cannot write the {what}: directory {parent} does not exist")
        parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise DsmnError(f"{path}: cannot write the {what}: directory {parent} is not writable")
    return path


def output_dir(path, what="output directory"):
    """`path` as a Path that is (or can be made) a directory; created if missing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DsmnError(f"{path}: is a file; the {what} must be a directory")
    output_file(path / ".probe", what)  # the same ancestor checks, and creates the parents
    path.mkdir(exist_ok=True)
    return path


def read_int8_npy(path, what="inputs"):
    """An int8 array from a .npy file, or a DsmnError naming the file and what is wrong."""
    import numpy as np

    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DsmnError(f"{path}: {what} must be an int8 .npy array ({exc})") from None
    if not isinstance(x, np.ndarray):
        raise DsmnError(f"{path}: {what} must be one .npy array, not an .npz archive")
    if x.dtype != np.int8:
        raise DsmnError(f"{path}: {what} must be int8 (got {x.dtype})")
    return x
