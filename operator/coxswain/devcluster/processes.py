"""Starting and stopping the components as process groups, and finding stale ones.

Every component starts in its own session (so its own process group): Ctrl-C in the
terminal that ran `up` does not reach it, and `down` can stop it with everything it spawned
by signalling the group. Each child also carries `COXSWAIN_DEVCLUSTER=<cluster dir>` in its
environment, so processes of a cluster whose state file was lost can still be found in /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from coxswain.devcluster.state import ProcessRecord

MARKER_ENV = "COXSWAIN_DEVCLUSTER"


def process_start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def is_alive(record: ProcessRecord) -> bool:
    """True when the recorded process still runs (and is not a zombie or a reused PID)."""
    if process_start_ticks(record.pid) != record.start_ticks:
        return False
    try:
        state = Path(f"/proc/{record.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def spawn(
    name: str, argv: list[str], log: Path, cluster_dir: Path, env: Mapping[str, str] | None = None
) -> ProcessRecord:
    """Start `argv` in a new session with stdout and stderr appended to `log`."""
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env[MARKER_ENV] = str(cluster_dir)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=True,
            close_fds=True,
        )
    ticks = process_start_ticks(proc.pid)
    # A child that already exited has no /proc entry left to read; record 0 so it is "dead".
    return ProcessRecord(name=name, pid=proc.pid, start_ticks=ticks or 0, log=log)


def _group_alive(pgid: int) -> bool:
    """True while a member of the group runs. Zombies do not count: `up` reaps its own
    children here, and a zombie whose parent is elsewhere holds no port and no file."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-pgid, os.WNOHANG)[0] > 0:
            pass
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            rest = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(rest[2]) == pgid and rest[0] not in ("Z", "X"):
            return True
    return False


def stop_groups(pgids: Iterable[int], grace_seconds: float = 10.0) -> None:
    """SIGTERM each process group, wait up to `grace_seconds`, then SIGKILL what is left."""
    pending = [g for g in set(pgids) if g > 1 and g != os.getpgrp()]
    for pgid in pending:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while pending and time.monotonic() < deadline:
        pending = [g for g in pending if _group_alive(g)]
        if pending:
            time.sleep(0.1)
    for pgid in pending:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    end = time.monotonic() + 5
    while pending and time.monotonic() < end:
        pending = [g for g in pending if _group_alive(g)]
        if pending:
            time.sleep(0.05)


def marked_processes(cluster_dir: Path) -> list[int]:
    """PIDs of processes started for `cluster_dir`, found by their environment marker."""
    marker = f"{MARKER_ENV}={cluster_dir}".encode()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def program_name(pid: int) -> str:
    """The base name of the program `pid` runs ("" when it is gone)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return ""
    return Path(argv0.decode(errors="replace")).name


def process_group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_in_use(port: int) -> bool:
    """True when something listens on 127.0.0.1:`port` (a connect succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
