"""Starting a container as a process tree of its own, and stopping it.

`nsenter --net=<pod netns> unshare --mount --uts --pid --fork --kill-child --mount-proc sh -c
<setup> <command...>`: the setup script bind-mounts the volumes (in the new mount
namespace, so nothing is seen on the host), sets the hostname, changes directory and
execs the command, which becomes PID 1 of a PID namespace of its own. When PID 1 dies the
kernel kills everything else in that namespace, so no grandchild (torchrun's workers start
their own sessions) can outlive its container. `--kill-child` and a parent-death signal
chain the whole tree to the agent: if the agent dies, its containers die with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shlex
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

NSENTER = "/usr/bin/nsenter"
UNSHARE = "/usr/bin/unshare"
SH = "/bin/sh"
MOUNT = "/usr/bin/mount"
HOSTNAME = "/bin/hostname"
# Exit status of the setup script when the container never got to exec its command.
START_ERROR_EXIT = 128
START_ERROR_PREFIX = "coxswain-agent: cannot start container:"
_PR_SET_PDEATHSIG = 1


# Where the programs the agent starts live: this checkout (editable installs point into it)
# and the venv, wherever CI cloned them (often below /tmp, which pods mount over).
SOFTWARE_DIRS: tuple[PurePosixPath, ...] = tuple(
    dict.fromkeys(PurePosixPath(p) for p in (str(Path(__file__).resolve().parents[3]), sys.prefix))
)


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool = False


def setup_script(
    mounts: Sequence[Mount],
    hostname: str,
    workdir: str | None,
    started_marker: Path,
    staging: Path,
    read_only_root: bool = False,
    software: Sequence[PurePosixPath] = (),
) -> str:
    """The shell run inside the new namespaces before the container's command.

    `software` are host directories the container's programs live in (this project's
    checkout and venv): a volume mounted over one of their parents (a pod's /tmp over a
    checkout in /tmp, say) would hide them, so they are bound back on top.
    """
    q = shlex.quote
    # The marker is opened before any mount (a mount over its parent must not redirect it)
    # and written just before exec, so the agent can tell a start failure from an exit.
    # The marker's directory is bound onto itself first: an open file there then belongs to
    # that mount, not to /, which a read-only remount of / would otherwise refuse (EBUSY).
    marker_dir = q(str(started_marker.parent))
    lines = [
        f'fail() {{ echo {q(START_ERROR_PREFIX)} "$*" >&2; exit {START_ERROR_EXIT}; }}',
        f"mkdir -p {q(str(staging))} || fail staging",
        f"{MOUNT} --bind {marker_dir} {marker_dir} || fail mount {marker_dir}",
        f"exec 9>{q(str(started_marker))} || fail marker",
    ]
    ordered = sorted(mounts, key=lambda m: (m.target.rstrip("/").count("/"), m.target))
    # Every source is first bound below `staging`: a later mount over one of its parents (a
    # pod's /tmp over a hostPath in /tmp, say) would otherwise hide it.
    for i, m in enumerate(ordered):
        src, stage = q(str(m.source)), q(str(staging / str(i)))
        lines.append(f"if [ -d {src} ]; then mkdir -p {stage}; else true > {stage}; fi || fail stage {src}")
        lines.append(f"{MOUNT} --bind {src} {stage} || fail mount {src}")
    targets = [PurePosixPath(m.target) for m in ordered]
    hidden = [p for p in software if any(p == t or t in p.parents for t in targets)]
    for i, path in enumerate(hidden):
        stage = q(str(staging / f"software-{i}"))
        lines.append(
            f"mkdir -p {stage} && {MOUNT} --bind {q(str(path))} {stage} || fail stage {q(str(path))}"
        )
    # Parents first, so a mount below another lands inside it (as containerd orders them).
    for i, m in enumerate(ordered):
        src, dst = q(str(staging / str(i))), q(m.target)
        # A missing mount point is created (on the host file system: it is the same one).
        lines.append(
            # An empty file where a directory belongs is a mount point an earlier file volume left.
            f"if [ -d {src} ]; then {{ [ -f {dst} ] && [ ! -s {dst} ] && rm -f {dst}; mkdir -p {dst}; }} || fail mkdir {dst}; "
            f'else mkdir -p "$(dirname {dst})" && {{ [ -e {dst} ] || true > {dst}; }} || fail create {dst}; fi'
        )
        lines.append(f"{MOUNT} --bind {src} {dst} || fail mount {dst}")
        if m.read_only:
            lines.append(f"{MOUNT} -o remount,bind,ro {dst} || fail read-only {dst}")
    for i, path in enumerate(hidden):
        stage = q(str(staging / f"software-{i}"))
        lines.append(
            f"mkdir -p {q(str(path))} && {MOUNT} --bind {stage} {q(str(path))} || fail mount {q(str(path))}"
        )
    lines.append(f"{HOSTNAME} {q(hostname)} || fail hostname")
    if workdir:
        lines.append(f"mkdir -p {q(workdir)} && cd {q(workdir)} || fail workingDir {q(workdir)}")
    if read_only_root:
        # readOnlyRootFilesystem: a bind remount changes this namespace's view of / only (a
        # plain remount would change the host's file system); volumes stay as mounted.
        lines.append(f"{MOUNT} -o remount,bind,ro / || fail read-only root file system")
    lines.append(
        'command -v "$1" >/dev/null 2>&1 || fail "exec: \\"$1\\": executable file not found in $PATH"'
    )
    lines.append("echo started >&9; exec 9>&-")
    lines.append('exec "$@"')
    return "\n".join(lines)


def _child_setup(cgroup: Path | None) -> Callable[[], None]:
    def setup() -> None:
        # Runs in the child between fork and exec: if the agent dies, the container gets
        # SIGKILL; its whole tree is accounted (and limited) in its memory cgroup.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    return setup


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Handed to the child, closed by the caller right after the spawn.
    return open(path, "ab")


async def spawn(
    netns: str | None,
    script: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    cgroup: Path | None = None,
) -> asyncio.subprocess.Process:
    """Start the container; `netns` None keeps the host's network (hostNetwork pods)."""
    enter = [NSENTER, f"--net=/run/netns/{netns}", "--"] if netns else []
    cmd = [
        *enter,
        UNSHARE,
        "--mount",
        "--uts",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--",
        SH,
        "-c",
        script,
        "container",
        *argv,
    ]
    log = _open_log(log_path)
    try:
        return await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=dict(env),
            start_new_session=True,
            preexec_fn=_child_setup(cgroup),
        )
    finally:
        log.close()


def child_pids(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


async def container_init_pid(launcher: asyncio.subprocess.Process, wait_seconds: float = 5.0) -> int | None:
    """The host PID of the container's PID 1 (unshare's forked child); None if it is gone."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while loop.time() < deadline and launcher.returncode is None:
        kids = child_pids(launcher.pid)
        if kids:
            return kids[0]
        await asyncio.sleep(0.01)
    return None


def signal_pid(pid: int | None, sig: signal.Signals) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def exit_code(returncode: int) -> int:
    """A signal death (negative returncode) as the shell's 128+N, as runtimes report it."""
    return 128 - returncode if returncode < 0 else returncode


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: tells a recorded PID from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


async def exec_in(init_pid: int | None, argv: Sequence[str], env: Mapping[str, str], seconds: float) -> int:
    """Run a command inside a running container's namespaces (exec probes)."""
    if init_pid is None:
        return 126
    proc = await asyncio.create_subprocess_exec(
        NSENTER,
        f"--target={init_pid}",
        "--net",
        "--mount",
        "--uts",
        "--pid",
        "--",
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=dict(env),
        start_new_session=True,
    )
    try:
        return await asyncio.wait_for(proc.wait(), seconds)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 124
