"""The local store is private to its user: the data dir and the Redis socket's fallback folder
are 0700 and ours, or the sidecar refuses to start; tokens over plain TCP are warned about."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tempfile
from pathlib import Path

import pytest

from latentguard.server.app import Sidecar
from latentguard.server.config import Settings, TokenEntry
from latentguard.server.store.embedded import RedisServer, free_port
from latentguard.server.store.private import UnsafeFolderError, fresh_private_dir, private_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_dir_tightens_our_own_folder(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    folder.chmod(0o777)
    private_dir(folder)
    assert mode(folder) == 0o700
    assert mode(private_dir(tmp_path / "new" / "deeper")) == 0o700


def test_private_dir_refuses_a_symbolic_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafeFolderError, match="symbolic link"):
        private_dir(tmp_path / "link")


def test_a_fallback_folder_open_to_others_is_refused(tmp_path: Path) -> None:
    """Someone made the shared-temp folder first (0777): the sidecar must not use it."""
    planted = tmp_path / "latentguard-planted"
    planted.mkdir()
    planted.chmod(0o777)
    with pytest.raises(UnsafeFolderError, match="0777"):
        fresh_private_dir(planted)
    mine = fresh_private_dir(tmp_path / "latentguard-mine")
    assert mode(mine) == 0o700 and fresh_private_dir(mine) == mine  # a restart reuses it


def test_a_long_data_dir_refuses_a_planted_socket_folder(tmp_path: Path) -> None:
    """The embedded Redis falls back to $TMPDIR/latentguard-<hash> when <data_dir>/redis.sock is
    too long for a unix socket; a folder already there that others can enter is refused."""
    data_dir = tmp_path / ("d" * 120)
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    planted = Path(tempfile.gettempdir()) / f"latentguard-{digest}"
    planted.mkdir(exist_ok=True)
    planted.chmod(0o777)
    try:
        with pytest.raises(UnsafeFolderError, match=str(planted)):
            RedisServer(data_dir).start()
    finally:
        planted.rmdir()


async def test_the_sidecar_tightens_its_data_dir_and_socket(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_dir.chmod(0o777)
    old = os.umask(0)
    try:
        sidecar = await Sidecar(Settings(data_dir=data_dir)).start()
    finally:
        os.umask(old)
    try:
        assert mode(data_dir) == 0o700
        assert mode(data_dir / "latentguard.sock") == 0o600
    finally:
        await sidecar.stop()


async def test_tokens_over_plain_tcp_are_warned_about(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    token = TokenEntry(name="ops", role="admin", token_sha256="0" * 64)
    settings = Settings(data_dir=tmp_path / "data", listen=f"127.0.0.1:{free_port()}",
                        auth={"tokens": [token]})
    with caplog.at_level(logging.WARNING, logger="latentguard.server.app"):
        sidecar = await Sidecar(settings).start()
    try:
        assert any("bearer tokens travel in plain text" in r.getMessage() for r in caplog.records)
    finally:
        await sidecar.stop()


def test_a_root_owned_data_dir_is_used_as_it_is(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A Kubernetes volume is root's (0777, group of the pod's fsGroup) and cannot be tightened
    by the pod's user: the sidecar accepts it for its data dir, where it keeps its Redis folder
    and socket private, and refuses it anywhere else."""
    if os.getuid() != 0:
        pytest.skip("the folder must belong to root: run as root (CI does)")
    import latentguard.server.store.private as private

    volume = tmp_path / "volume"
    volume.mkdir()
    volume.chmod(0o777)
    monkeypatch.setattr(private.os, "getuid", lambda: 10001)  # the pod's user
    with pytest.raises(UnsafeFolderError, match="owned by uid 0"):
        private_dir(volume)
    assert private_dir(volume, root_owned_ok=True) == volume
    assert mode(volume) == 0o777  # root's: left as it is
