"""Files and folders written whole or not at all: a reader, or a run killed half-way, never meets half of one.

    write_json(path, data)                      a JSON file
    with atomic_path(path) as tmp: ...          any file a library writes by name (a plot, a WAV file)
    write_directory(write, directory)           a folder filled by `write(tmp_folder)`
    move_into_place(folder, directory)          a finished folder put where another may stand

Temporary siblings are named `<path>.tmp-<pid>` (and a replaced folder `<path>.old-<pid>` for an instant), so a
second process never writes into the first one's, and what a killed run left is recognisable.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

from modeling_concept_talker.audio import apply_umask


def temporary_sibling(path: str, kind: str = "tmp") -> str:
    return f"{os.path.abspath(path)}.{kind}-{os.getpid()}"


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path beside `path` to write; on success it replaces `path` (with the user's usual file
    permissions), on an error it is removed and `path` is left as it was."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(path: str, data, **dump_kwargs) -> None:
    """`json.dump(data)` to `path` (indent 2 unless `dump_kwargs` say otherwise), whole or not at all."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, **{"indent": 2, **dump_kwargs})


def move_into_place(folder: str, directory: str, replace: bool = False) -> None:
    """Rename the finished `folder` to `directory`. An existing `directory` is replaced only with `replace` (it is
    renamed aside, the new one renamed in, then the old one deleted), else `FileExistsError`."""
    if os.path.lexists(directory):
        if not replace:
            raise FileExistsError(f"{directory} exists already: it is not replaced.")
        old = temporary_sibling(directory, "old")
        os.rename(directory, old)
        os.rename(folder, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(folder, directory)


def write_directory(write, directory: str, replace: bool = False) -> None:
    """Run `write(tmp_folder)` on a temporary sibling of `directory`, then `move_into_place` it: `directory` is
    absent, the old folder, or the new one whole. On an error the temporary folder is removed."""
    tmp = temporary_sibling(directory)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        move_into_place(tmp, directory, replace=replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
