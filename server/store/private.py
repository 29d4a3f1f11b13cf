"""Folders only this user can enter: the data dir (which holds the gRPC socket and the
embedded Redis) and the short fallback folder for the Redis socket under the temp dir.

Another local user who can enter such a folder can reach the sockets in it (the gRPC socket
needs no token by default), or swap the Redis socket for one of their own.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = ["UnsafeFolderError", "fresh_private_dir", "private_dir"]

log = logging.getLogger(__name__)


class UnsafeFolderError(OSError):
    """A folder that should be private is another user's, or open to others; the message names
    it and the fix."""


def private_dir(path: Path, *, root_owned_ok: bool = False) -> Path:
    """Creates `path` with mode 0700, or tightens an existing folder of ours to 0700; refuses a
    folder owned by someone else or a symbolic link.

    With `root_owned_ok`, a folder root made for us is accepted as it is (a Kubernetes volume
    is root's, group-writable for the pod's fsGroup): it cannot be tightened, so what the
    sidecar keeps in it is made private file by file (the Redis folder, the socket)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = _check_owner(path, root_ok=root_owned_ok)
    if info.st_uid != os.getuid():
        log.warning("%s belongs to root and stays mode %04o: its contents are made private "
                    "instead", path, stat.S_IMODE(info.st_mode))
    elif stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def fresh_private_dir(path: Path) -> Path:
    """Like `private_dir` for a folder in a shared place (the temp dir): an existing one must
    already be ours with mode 0700; one that was ever open to others is refused, because what
    it holds may have been planted."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = _check_owner(path)
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise UnsafeFolderError(f"{path}: mode {mode:04o}, expected 0700 (others can enter "
                                "it); remove it, or set a shorter LATENTGUARD_DATA_DIR")
    return path


def _check_owner(path: Path, *, root_ok: bool = False) -> os.stat_result:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UnsafeFolderError(f"{path}: not a folder (a symbolic link or a file); remove it")
    if info.st_uid != os.getuid() and not (root_ok and info.st_uid == 0):
        raise UnsafeFolderError(f"{path}: owned by uid {info.st_uid}, not by this user "
                                f"({os.getuid()}); use a data dir of your own")
    return info
