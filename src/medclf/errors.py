"""The one exception type for mistakes a user can fix, and the translation of the environment's faults into it.

Messages are one sentence that names the fix. They never contain raw input
text (medical text may hold patient data): name rows, columns, counts and
labels instead.

Faults of the environment (a full disk, a read-only or unwritable folder, an input file that vanished while it
was read) reach medclf as an OSError from Python, pandas or pyarrow, or as an error of a native writer
(safetensors' SafetensorError carries the OS error code in its message). `environment_error` finds such a fault
anywhere in an exception's chain and words it as a MedclfError naming the path and the fix; the CLI maps it to
exit 2 like every other user error. Every writer stages its output and renames it into place, so nothing
half-written is left when one of these ends a command.
"""

from __future__ import annotations

import errno
import re


class MedclfError(ValueError):
    """A user error: bad data, a bad option, a missing file. The CLI exits 2."""


_FULL = "there is no space left on the disk that holds {path}; free space there or write to another disk (--output)."
ENVIRONMENT_FIXES: dict[int, str] = {
    errno.ENOSPC: _FULL,
    errno.EDQUOT: _FULL.replace("no space left on", "no quota left on"),
    errno.EFBIG: "the file {path} would grow past the largest file its file system allows; write to another disk (--output).",
    errno.EROFS: "the path {path} is on a read-only file system; write to a writable folder (--output) or mount it read-write.",
    errno.EACCES: "permission to {path} is denied; use a path you may read and write or change its permissions.",
    errno.EPERM: "permission to {path} is denied; use a path you may read and write or change its permissions.",
    errno.ENOENT: "the file {path} is no longer there (moved or deleted while medclf ran); put it back or pass its new path, "
                  "then re-run.",
    errno.EIO: "reading or writing {path} failed with an input/output error of the disk or network share; check it "
               "(or use another disk) and re-run.",
}
"""What to tell the user for each OS error a command's environment can cause; '{path}' is filled in."""
_NATIVE_CODE = re.compile(r"Os \{ code: (\d+)|\[Errno (\d+)\]|os error (\d+)")
_NATIVE_WORDS = {"No space left on device": errno.ENOSPC, "Read-only file system": errno.EROFS,
                 "Permission denied": errno.EACCES, "Disk quota exceeded": errno.EDQUOT}


def _os_code(exc: BaseException) -> int | None:
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    if isinstance(exc, OSError) or type(exc).__name__ in ("SafetensorError", "RuntimeError"):
        text = str(exc)  # a native writer's message: its OS code or the OS's own words, never data
        match = _NATIVE_CODE.search(text)
        if match:
            return int(next(group for group in match.groups() if group))
        return next((code for words, code in _NATIVE_WORDS.items() if words in text), None)
    return None


def _shown_path(filename: object, fallback: str | None) -> str:
    """The path to name: the one the OS reported, unless it is a hidden staging file medclf made (then the output
    it was becoming), else the command's output."""
    if isinstance(filename, (str, bytes)) and filename:
        name = filename.decode(errors="replace") if isinstance(filename, bytes) else filename
        staged = any(part.startswith(".") and (".partial-" in part or part.endswith(".tmp")) for part in re.split(r"[\\/]", name))
        if not (staged and fallback):
            return name
    return fallback or "the output folder"


def environment_error(exc: BaseException, *, path: str | None = None) -> MedclfError | None:
    """A MedclfError for a fault of the environment found in `exc`'s chain (its causes and contexts), or None.
    `path` names the command's output, used where the fault does not carry its own path."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = _os_code(current)
        if code in ENVIRONMENT_FIXES:
            where = _shown_path(getattr(current, "filename", None), path)
            message = ENVIRONMENT_FIXES[code].format(path=where)
            return MedclfError(message[0].upper() + message[1:])  # the fixes read as sentences
        current = current.__cause__ or current.__context__
    return None
