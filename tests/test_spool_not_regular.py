"""Entries of the spool's ``in/`` that are not regular files: FIFOs, sockets, devices.

Each is refused with a reason naming its path and what it is, moved to ``failed/`` and never
opened (opening a FIFO for reading blocks until a writer comes: the timeout mark turns such a
hang into a failure). One that cannot be moved is reported once and left alone until the
next start. Symbolic links stay refused as links (never followed, even to a FIFO); folders are
walked, not refused.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmcross.app.embedded import EmbeddedService
from mmcross.brokers.spool import (
    NOT_REGULAR,
    SYMLINK,
    FileSpool,
    NotARegularFileError,
    classify,
    read_regular,
)
from mmcross.catalogs import Store
from mmcross.model.config import Config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[EmbeddedService]:
    """A started embedded service on ``tmp_path/spool`` (settle 0 s: a file is taken at the
    second pass that sees it unchanged)."""
    config = Config.load(overrides={
        "kafka": {"bootstrap_servers": ""}, "metrics": {"port": -1},
        "spool": {"directory": str(tmp_path / "spool"), "settle": 0.0,
                  "poll_interval": 0.05}})
    svc = EmbeddedService(config, Store(f"sqlite:///{tmp_path / 'spool.sqlite'}"))
    svc.start()
    try:
        yield svc
    finally:
        svc.close()


def make_socket(path: Path) -> None:
    """A Unix socket file at ``path`` (bound from its folder: the 108-byte address limit)."""
    here = os.getcwd()
    sock = socket.socket(socket.AF_UNIX)
    try:
        os.chdir(path.parent)
        sock.bind(path.name)
    finally:
        os.chdir(here)
        sock.close()


def reason_of(failed: Path) -> str:
    return failed.with_name(failed.name + ".reason.txt").read_text()


def dead_letters(service: EmbeddedService) -> float:
    return service.metrics.value("dead_letters_total", error="NotARegularFileError")


def test_fifos_and_sockets_in_the_inbox_go_to_failed_with_their_reason(
        service: EmbeddedService) -> None:
    spool = service.spool
    assert spool is not None
    inbox = spool.inbox
    (inbox / "notices").mkdir()
    (inbox / "extra").mkdir()
    made = {"pipe.xml": "a FIFO (named pipe)", "pipe.avro": "a FIFO (named pipe)",
            "notices/pipe.json": "a FIFO (named pipe)", "extra/pipe.wires": "a FIFO (named pipe)",
            "sock.xml": "a socket"}
    for name, what in made.items():
        if what == "a socket":
            make_socket(inbox / name)
        else:
            os.mkfifo(inbox / name)
    assert spool.pending() == len(made)

    assert service.step() == 0  # first sight: not settled yet
    assert service.step() == len(made)

    for name, what in made.items():
        moved = spool.failed / name
        assert not os.path.lexists(inbox / name)
        assert stat.S_IFMT(moved.lstat().st_mode) in (stat.S_IFIFO, stat.S_IFSOCK)
        reason = reason_of(moved)
        assert str(inbox / name) in reason and what in reason
        assert "not a regular file" in reason
    assert spool.pending() == 0
    assert dead_letters(service) == len(made)
    assert (inbox / "notices").is_dir() and (inbox / "extra").is_dir()  # folders stay
    assert service.step() == 0
    assert not any((spool.directory / "journal").iterdir())


def test_device_in_the_inbox_goes_to_failed(service: EmbeddedService) -> None:
    spool = service.spool
    assert spool is not None
    try:
        os.mknod(spool.inbox / "null.xml", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except OSError as exc:  # no CAP_MKNOD
        pytest.skip(f"cannot make a device node here: {exc}")
    service.step()
    assert service.step() == 1
    assert "a character device" in reason_of(spool.failed / "null.xml")
    assert stat.S_ISCHR((spool.failed / "null.xml").lstat().st_mode)


def test_link_to_a_fifo_is_refused_as_a_link_and_not_followed(
        service: EmbeddedService, tmp_path: Path) -> None:
    spool = service.spool
    assert spool is not None
    os.mkfifo(tmp_path / "elsewhere.fifo")
    os.symlink(tmp_path / "elsewhere.fifo", spool.inbox / "link.xml")
    service.step()
    assert service.step() == 1
    assert (spool.failed / "link.xml").is_symlink()
    assert "symbolic link" in reason_of(spool.failed / "link.xml")
    assert stat.S_ISFIFO((tmp_path / "elsewhere.fifo").lstat().st_mode)  # left alone


def test_fifo_that_cannot_be_moved_is_reported_once_and_ignored_until_restart(
        service: EmbeddedService, caplog: pytest.LogCaptureFixture) -> None:
    spool = service.spool
    assert spool is not None
    (spool.inbox / "sub").mkdir()
    os.mkfifo(spool.inbox / "sub" / "pipe.xml")
    (spool.failed / "sub").write_bytes(b"")  # a file where failed/sub/ must go

    with caplog.at_level(logging.WARNING, logger="mmcross.app.embedded"):
        service.step()
        assert service.step() == 1
        for _ in range(5):
            assert service.step() == 0
    reports = [r for r in caplog.records if "pipe.xml" in r.getMessage()]
    assert len(reports) == 1 and reports[0].levelno == logging.ERROR
    assert "ignored until restart" in reports[0].getMessage()
    assert dead_letters(service) == 1
    assert spool.pending() == 0
    assert stat.S_ISFIFO((spool.inbox / "sub" / "pipe.xml").lstat().st_mode)
    assert not any((spool.directory / "journal").iterdir())

    (spool.failed / "sub").unlink()  # fixed; a new start (a new spool) moves it
    again = FileSpool(spool.directory, settle=0.0)
    assert again.pending() == 1
    list(again.ready())
    [item] = list(again.ready())
    assert item.kind == NOT_REGULAR


def test_regular_file_put_where_a_stuck_fifo_was_is_handled(service: EmbeddedService) -> None:
    spool = service.spool
    assert spool is not None
    (spool.inbox / "sub").mkdir()
    os.mkfifo(spool.inbox / "sub" / "pipe.xml")
    (spool.failed / "sub").write_bytes(b"")
    service.step()
    service.step()
    os.unlink(spool.inbox / "sub" / "pipe.xml")
    (spool.inbox / "sub" / "pipe.xml").write_bytes(b"not a notice")  # may reuse the inode
    (spool.failed / "sub").unlink()

    service.step()
    assert service.step() == 1
    assert (spool.failed / "sub" / "pipe.xml").read_bytes() == b"not a notice"
    assert "BadNoticeError" in reason_of(spool.failed / "sub" / "pipe.xml")


def test_ready_names_the_kind_of_every_entry_without_opening_it(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path / "spool", settle=0.0)
    os.mkfifo(spool.inbox / "pipe.avro")
    os.symlink(spool.inbox / "pipe.avro", spool.inbox / "link.avro")
    (spool.inbox / "note.xml").write_bytes(b"<x/>")
    (spool.inbox / "folder.xml").mkdir()
    list(spool.ready())
    kinds = {item.path.name: item.kind for item in spool.ready()}
    assert kinds == {"pipe.avro": NOT_REGULAR, "link.avro": SYMLINK, "note.xml": "notice"}


def test_reading_a_path_swapped_for_a_fifo_or_a_link_refuses_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.avro")
    with pytest.raises(NotARegularFileError) as raised:
        read_regular(tmp_path / "pipe.avro")
    assert raised.value.path == tmp_path / "pipe.avro"
    assert raised.value.file_type == "a FIFO (named pipe)"
    with pytest.raises(NotARegularFileError):
        classify(tmp_path / "pipe.avro", tmp_path)
    (tmp_path / "real.xml").write_bytes(b"<x/>")
    os.symlink(tmp_path / "real.xml", tmp_path / "link.xml")
    with pytest.raises(OSError):
        read_regular(tmp_path / "link.xml")
    assert read_regular(tmp_path / "real.xml") == b"<x/>"
