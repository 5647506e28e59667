"""Start-up recovery of the spool journal with a poison entry among intact ones.

A committed entry that cannot be applied as written (bad JSON, wrong shape, staged data
missing, a store payload that does not decode, not even a file) is set aside in
``journal/quarantine/<seq>/`` with a structured reason, and the entries around it are applied
exactly once; a restart does not meet it again. An intact entry whose apply hits an
operating-system or store error makes start-up fail and stays committed for the next start.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path

import pytest

from mmcross.app.embedded import EmbeddedService
from mmcross.app.staged_store import decode_writes
from mmcross.brokers import spool as spool_module
from mmcross.brokers.spool import (
    BadJournalEntryError,
    JournalEntry,
    OutputTransaction,
    SpoolJournal,
)
from mmcross.catalogs import Store
from mmcross.model.config import Config
from mmcross.model.errors import StoreError

pytestmark = pytest.mark.timeout(60)


def commit_three(root: Path, payload: bytes = b"") -> tuple[SpoolJournal, list[Path]]:
    """A journal under ``root`` with three committed, unapplied entries: entry ``k`` appends
    line ``k`` to ``out/lines.jsonl``, writes ``out/file-k.xml`` and moves ``in/k.xml`` to
    ``done/``; the middle one carries the store ``payload`` when given."""
    journal = SpoolJournal(root / "journal")
    (root / "in").mkdir(parents=True)
    entries = []
    for k in range(3):
        (root / "in" / f"{k}.xml").write_bytes(b"<x/>")
        txn = OutputTransaction()
        txn.append(root / "out" / "lines.jsonl", f'{{"k": {k}}}\n')
        txn.put_file(root / "out" / f"file-{k}.xml", f"<file k='{k}'/>".encode())
        txn.moves.append((root / "in" / f"{k}.xml", root / "done" / f"{k}.xml"))
        entries.append(journal.commit(txn, payload if k == 1 else b""))
    return journal, entries


def lines(root: Path) -> list[int]:
    path = root / "out" / "lines.jsonl"
    return [json.loads(line)["k"] for line in path.read_text().splitlines()] \
        if path.exists() else []


def no_store(payload: bytes | None) -> None:
    assert payload is None


def corrupt_truncated_json(entry: Path) -> None:
    entry.write_bytes(entry.read_bytes()[:17])


def corrupt_not_utf8(entry: Path) -> None:
    entry.write_bytes(b"\xff\xfe" + entry.read_bytes())


def corrupt_wrong_shape(entry: Path) -> None:
    entry.write_text(json.dumps({"appends": 3, "files": [], "moves": [], "store": False}))


def corrupt_missing_key(entry: Path) -> None:
    record = json.loads(entry.read_text())
    del record["moves"]
    entry.write_text(json.dumps(record))


def corrupt_escaping_name(entry: Path) -> None:
    record = json.loads(entry.read_text())
    record["files"][0][1] = "../../in/0.xml"
    entry.write_text(json.dumps(record))


def corrupt_chunk_missing(entry: Path) -> None:
    (entry.with_suffix("") / "append-0").unlink()


def corrupt_staging_missing(entry: Path) -> None:
    for staged in entry.with_suffix("").iterdir():
        staged.unlink()
    entry.with_suffix("").rmdir()


def corrupt_entry_is_a_fifo(entry: Path) -> None:
    entry.unlink()
    os.mkfifo(entry)  # reading it would block start-up for ever


def corrupt_entry_is_a_directory(entry: Path) -> None:
    entry.unlink()
    entry.mkdir()


POISON = {  # how the middle entry is damaged -> the part named by the error
    "truncated_json": (corrupt_truncated_json, "entry"),
    "not_utf8": (corrupt_not_utf8, "entry"),
    "wrong_shape": (corrupt_wrong_shape, "entry"),
    "missing_key": (corrupt_missing_key, "entry"),
    "staged_name_escaping_its_folder": (corrupt_escaping_name, "entry"),
    "append_chunk_missing": (corrupt_chunk_missing, "append-0"),
    "staging_folder_missing": (corrupt_staging_missing, "append-0"),
    "entry_is_a_fifo": (corrupt_entry_is_a_fifo, "entry"),
    "entry_is_a_directory": (corrupt_entry_is_a_directory, "entry"),
}


@pytest.mark.parametrize("damage", sorted(POISON))
def test_poison_entry_is_quarantined_and_the_others_are_applied_once(tmp_path: Path,
                                                                      damage: str) -> None:
    journal, entries = commit_three(tmp_path)
    corrupt, part = POISON[damage]
    corrupt(entries[1])

    recovery = journal.recover(no_store)

    assert recovery.applied == 2
    [err] = recovery.quarantined
    assert isinstance(err, BadJournalEntryError)
    assert (err.entry, err.part) == (entries[1], part)
    assert err.reason and str(entries[1]) in str(err)
    assert lines(tmp_path) == [0, 2]
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["0.xml", "2.xml"]
    assert (tmp_path / "in" / "1.xml").exists()  # its input is read again by the service
    assert not (tmp_path / "out" / "file-1.xml").exists()  # nothing of it was applied
    place = journal.directory / "quarantine" / entries[1].stem
    assert json.loads((place / "reason.json").read_text()) == err.to_json() == {
        "error": "BadJournalEntryError", "entry": str(entries[1]), "part": part,
        "reason": err.reason}
    assert os.path.lexists(place / "entry.json")
    if damage not in ("staging_folder_missing",):
        assert (place / "staged").is_dir()
    assert sorted(p.name for p in journal.directory.iterdir()) == ["quarantine"]

    again = journal.recover(no_store)  # a restart does not meet it again

    assert (again.applied, again.quarantined, again.discarded) == (0, [], 0)
    assert lines(tmp_path) == [0, 2]
    assert (place / "reason.json").exists()


def test_store_payload_that_does_not_decode_is_quarantined_before_anything_is_applied(
        tmp_path: Path) -> None:
    journal, entries = commit_three(tmp_path, payload=b"not a pickle")
    applied: list[bytes | None] = []

    recovery = journal.recover(applied.append, check_store=decode_writes)

    [err] = recovery.quarantined
    assert (err.entry, err.part) == (entries[1], "store.bin")
    assert "does not decode" in err.reason
    assert applied == [None, None]
    assert lines(tmp_path) == [0, 2]
    assert (journal.directory / "quarantine" / entries[1].stem / "staged" / "store.bin") \
        .read_bytes() == b"not a pickle"


def test_store_payload_missing_is_quarantined(tmp_path: Path) -> None:
    journal, entries = commit_three(tmp_path, payload=pickle.dumps([]))
    (entries[1].with_suffix("") / "store.bin").unlink()

    recovery = journal.recover(lambda payload: None, check_store=decode_writes)

    assert [(e.entry, e.part) for e in recovery.quarantined] == [(entries[1], "store.bin")]
    assert lines(tmp_path) == [0, 2]


def test_intact_entries_half_applied_before_a_crash_are_finished_exactly_once(
        tmp_path: Path) -> None:
    journal, entries = commit_three(tmp_path)
    # a crash in the middle of applying entry 0: its line appended, its file not yet moved
    out = tmp_path / "out" / "lines.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes((entries[0].with_suffix("") / "append-0").read_bytes())

    recovery = journal.recover(no_store)

    assert (recovery.applied, recovery.quarantined) == (3, [])
    assert lines(tmp_path) == [0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "file-0.xml", "file-1.xml", "file-2.xml", "lines.jsonl"]
    assert list(journal.directory.iterdir()) == []


def test_os_error_while_applying_an_intact_entry_fails_loudly_and_keeps_it(
        tmp_path: Path) -> None:
    journal, entries = commit_three(tmp_path, payload=pickle.dumps([]))

    def disk_full(payload: bytes | None) -> None:
        if payload is not None:
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as raised:
        journal.recover(disk_full, check_store=decode_writes)
    assert raised.value.errno == errno.ENOSPC
    assert entries[1].exists() and not entries[0].exists()
    assert not (journal.directory / "quarantine").exists()

    recovery = journal.recover(lambda payload: None, check_store=decode_writes)

    assert (recovery.applied, recovery.quarantined) == (2, [])
    assert lines(tmp_path) == [0, 1, 2]


def test_store_error_while_applying_an_intact_entry_fails_loudly_and_keeps_it(
        tmp_path: Path) -> None:
    journal, entries = commit_three(tmp_path, payload=pickle.dumps([]))

    def locked(payload: bytes | None) -> None:
        if payload is not None:
            raise StoreError("database is locked")

    with pytest.raises(StoreError):
        journal.recover(locked, check_store=decode_writes)
    assert entries[1].exists()
    assert not (journal.directory / "quarantine").exists()


def test_permission_error_reading_an_entry_fails_loudly_and_keeps_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal, entries = commit_three(tmp_path)

    def denied(path: Path) -> bytes:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(spool_module, "read_regular", denied)
    with pytest.raises(PermissionError):
        journal.recover(no_store)
    assert all(e.exists() for e in entries)
    assert not (journal.directory / "quarantine").exists()


def test_entry_quarantined_again_after_being_put_back_gets_a_folder_of_its_own(
        tmp_path: Path) -> None:
    journal, entries = commit_three(tmp_path)
    corrupt_truncated_json(entries[1])
    journal.recover(no_store)
    place = journal.directory / "quarantine" / entries[1].stem
    os.replace(place / "staged", entries[1].with_suffix(""))  # the operator retries it
    os.replace(place / "entry.json", entries[1])

    recovery = journal.recover(no_store)

    [err] = recovery.quarantined
    assert err.entry == entries[1]
    folders = sorted(p.name for p in (journal.directory / "quarantine").iterdir())
    assert len(folders) == 2 and folders[0] == entries[1].stem
    assert (journal.directory / "quarantine" / folders[1] / "entry.json").exists()


def test_read_checks_an_entry_without_applying_it(tmp_path: Path) -> None:
    journal, entries = commit_three(tmp_path)

    parsed = journal.read(entries[0])

    assert isinstance(parsed, JournalEntry)
    assert parsed.moves == [(tmp_path / "in" / "0.xml", tmp_path / "done" / "0.xml")]
    assert parsed.store is None
    assert lines(tmp_path) == []


def test_embedded_service_starts_past_a_poison_entry(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    journal, entries = commit_three(spool, payload=b"\x80\x05garbage")
    config = Config.load(overrides={
        "kafka": {"bootstrap_servers": ""}, "metrics": {"port": -1},
        "spool": {"directory": str(spool), "settle": 0.0, "poll_interval": 0.05}})
    service = EmbeddedService(config, Store(f"sqlite:///{tmp_path / 'spool.sqlite'}"))
    try:
        service.start()
        assert service.recovery is not None
        assert service.recovery.applied == 2
        assert [(e.entry.name, e.part) for e in service.recovery.quarantined] == [
            (entries[1].name, "store.bin")]
        assert lines(spool) == [0, 2]
        assert service.metrics.value("spool_quarantined") == 1  # an operator's alarm
        service.step()  # the service runs on
    finally:
        service.close()
    again = EmbeddedService(config, Store(f"sqlite:///{tmp_path / 'spool.sqlite'}"))
    try:
        again.start()  # nothing new set aside, the earlier entry still waits
        assert again.recovery is not None and again.recovery.quarantined == []
        assert again.metrics.value("spool_quarantined") == 1
    finally:
        again.close()


def test_append_after_a_quarantined_entry_lands_at_the_end_once_even_if_retried(
        tmp_path: Path) -> None:
    journal = SpoolJournal(tmp_path / "journal")
    out = tmp_path / "out" / "lines.jsonl"
    entries = []
    for k in range(3):
        txn = OutputTransaction()
        txn.append(out, f'{{"k": {k}}}\n')
        entries.append(journal.commit(txn, pickle.dumps([]) if k == 2 else b""))
    corrupt_truncated_json(entries[1])

    def store_down(payload: bytes | None) -> None:
        if payload is not None:  # entry 2: its line is appended, then the store fails
            raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError):
        journal.recover(store_down)
    assert lines(tmp_path) == [0, 2]

    recovery = journal.recover(lambda payload: None)

    assert recovery.applied == 1
    assert b"\0" not in out.read_bytes()
    assert lines(tmp_path) == [0, 2]
