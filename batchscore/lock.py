"""One run at a time per output: a lock file beside the output.

The lock holds the host, pid, process start time, run id and start time of
its holder. A second run exits at once (exit 4) naming the holder. A lock
whose holder is dead (same host, pid gone or reused) is stale and is taken
over, so a run killed with SIGKILL never blocks the next one;
``batchscore unlock OUTPUT`` removes a lock by hand (e.g. one left by a
machine that is gone). PostgreSQL outputs are locked otherwise, with an
advisory lock held by the run's session (:mod:`batchscore.sinks.postgres`);
``unlock`` shows who holds it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from .errors import LockedError, UsageError
from .report import log


def lock_path(output: str) -> str | None:
    """The lock file for an output, or None for destinations locked otherwise."""
    if "://" in output:
        scheme, _, rest = output.partition("://")
        if scheme.lower() == "file":
            output = rest
        elif scheme.lower() == "sqlite":
            path = rest[1:] if rest.startswith("/") else rest
            path = path.split("?", 1)[0]
            if not path or path == ":memory:":
                return None
            output = path
        else:
            return None  # servers (PostgreSQL): not a file on this machine
    output = output.rstrip("/\\") or output
    parent, name = os.path.split(os.path.abspath(output))
    return os.path.join(parent, f".{name}.batchscore.lock")


def _proc_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot tell: only `batchscore unlock` clears it
    pid = int(holder.get("pid", 0))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = holder.get("proc_start")
    return start is None or _proc_start(pid) in (None, start)


def _age(path: str) -> float:
    try:
        return time.time() - os.stat(path).st_mtime
    except OSError:
        return 0.0


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "a run that is writing its lock file right now"
    started = holder.get("started_at")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if started else "?"
    return f"host {holder.get('host')}, pid {holder.get('pid')}, run {holder.get('run_id')}, started {when}"


class OutputLock:
    """Held for the life of a run; ``release`` removes it."""

    def __init__(self, output: str, run_id: str, shown: str | None = None):
        self.output = output
        self.shown = shown or output
        self.path = lock_path(output)
        self.run_id = run_id
        self.held = False

    def acquire(self) -> "OutputLock":
        if self.path is None:
            return self
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "proc_start": _proc_start(os.getpid()),
            "run_id": self.run_id,
            "started_at": time.time(),
            "output": self.shown,
        }
        parent = os.path.dirname(self.path)
        if os.path.exists(parent) and not os.path.isdir(parent):
            import errno

            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", self.shown)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise type(exc)(exc.errno, exc.strerror, self.shown) from None
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pass
            except OSError as exc:
                raise type(exc)(exc.errno, exc.strerror, self.shown) from None
            else:
                with os.fdopen(fd, "w") as fh:
                    json.dump(me, fh)
                self.held = True
                return self
            try:
                holder = read_lock(self.path)
            except FileNotFoundError:
                continue
            fresh = holder is None and _age(self.path) < 5.0  # being written by its holder right now
            if fresh or (holder is not None and _alive(holder)):
                raise LockedError(
                    f"output {self.shown} is locked by another run ({describe_holder(holder or {})}): wait for it, "
                    f"or if that run is gone, run: batchscore unlock {self.shown}"
                ) from None
            log.warning(
                f"warning: removing a stale lock on {self.shown}"
                + (f" left by {describe_holder(holder)}" if holder else "")
            )
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            continue
        raise LockedError(f"output {self.shown} is being locked and unlocked by other runs: try again")

    def release(self) -> None:
        if self.held and self.path:
            try:
                holder = read_lock(self.path)
                if holder and holder.get("pid") == os.getpid() and holder.get("run_id") == self.run_id:
                    os.remove(self.path)
            except OSError:
                pass
            self.held = False


def read_lock(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise
    except (OSError, ValueError):
        return None  # half-written by a run that died while taking it


def unlock(output: str) -> str:
    """Remove the lock on an output; returns what was removed, for the user."""
    from .sinks import describe

    path = lock_path(output)
    if output.split("://", 1)[0].lower() in ("postgresql", "postgres") and "://" in output:
        from .sinks.postgres import unlock as pg_unlock

        return pg_unlock(output)  # an advisory lock: shows its holder, removes nothing
    try:
        output = describe(output)  # never show a password
    except Exception:  # noqa: BLE001 - an unknown scheme: show it as given
        pass
    if path is None:
        raise UsageError(f"{output} is not locked with a lock file; nothing to unlock")
    try:
        holder = read_lock(path)
    except FileNotFoundError:
        return f"{output} is not locked"
    os.remove(path)
    return f"removed the lock on {output}" + (f" held by {describe_holder(holder)}" if holder else "")
