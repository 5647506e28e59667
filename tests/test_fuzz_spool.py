"""Hostile files dropped into the embedded service's spool, through its public API.

Beside a real Swift BAT notice and a wire stream of Rubin alerts inside its error circle, the
operator's ``in/`` folders receive empty, truncated, huge (sparse, 1 GiB), mislabelled and
garbage files, symlinks (to a good notice, dangling, to themselves, to ``/dev/zero``), names
with new lines, non-UTF-8 bytes or 250 characters, and detection files of unknown partners.
Every hostile file must end in ``failed/`` with a ``.reason.txt``, the good files in ``done/``
with their matches reported, :meth:`EmbeddedService.step` must never raise, and reading stays
within a bounded amount of memory (traced allocations).
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
import tracemalloc
from pathlib import Path

import fastavro
import pytest

from mmcross.app.embedded import EmbeddedService
from mmcross.brokers.alert_files import write_wire_stream
from mmcross.brokers.rubin_schemas import get_schema
from mmcross.catalogs import Store
from mmcross.listeners import parse_notice
from mmcross.model.config import Config, notice_options

BAT = "gcn/voevent/fink-mm-kafka-2024-01/Swift_BAT_GRB_Pos_1208389-262.xml"
GBM = "gcn/voevent/fink-mm-kafka-2024-01/Fermi_GBM_Gnd_Pos_726773850-268.xml"
LVK = "gcn/json/fink-mm/S230518h-initial.json"
RUBIN = "alerts/lsst/samples/lsst.v9_0.wire.7912941781254298.avro"
CONTAINER = "alerts/lsst/samples/lsst.v11_0.fakeAlert.avro"
DEADLINE = 300.0  # s, bound of the wait for the spool to empty (a hang guard)
MEMORY_BOUND = 256 * 2**20  # bytes of traced allocations while the spool is handled
HUGE = 1 << 30  # bytes of a sparse file


def alerts_at(record: dict, ra: float, dec: float, mjd_tai: float, n: int) -> list[bytes]:
    """``n`` v9.0 wire packets (fastavro-written) at (ra, dec) deg, MJD TAI ``mjd_tai``."""
    schema = fastavro.parse_schema(get_schema(900).definition)
    out = []
    for k in range(n):
        rec = {**record, "diaSourceId": 7000 + k, "diaSource": {
            **record["diaSource"], "diaSourceId": 7000 + k, "ra": ra, "dec": dec,
            "midpointMjdTai": mjd_tai + 0.001 * k}}
        body = io.BytesIO()
        fastavro.schemaless_writer(body, schema, rec)
        out.append(b"\x00" + struct.pack(">I", 900) + body.getvalue())
    return out


def drop(path: Path, data: bytes | None = None, *, size: int | None = None,
         link: str | Path | None = None) -> Path:
    """Create ``path`` (parents too): bytes, a sparse file of ``size`` or a symlink."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if link is not None:
        os.symlink(link, path)
    elif size is not None:
        with open(path, "wb") as f:
            f.truncate(size)
    else:
        path.write_bytes(data or b"")
    return path


def files_under(directory: Path) -> set[str]:
    """Relative names (as bytes-safe str) of files and symlinks under ``directory``."""
    return {os.fsdecode(os.path.relpath(os.path.join(root, name), directory))
            for root, dirs, names in os.walk(directory) for name in names + [
                d for d in dirs if os.path.islink(os.path.join(root, d))]}


@pytest.mark.timeout(300)
def test_hostile_spool_files_fail_with_a_reason_and_good_ones_are_matched(tmp_path,
                                                                           shared_file):
    spool = tmp_path / "spool"
    config = Config.load(overrides={
        "localization": {"credible_level_tolerance": 1e-2}, "kafka": {"bootstrap_servers": ""},
        "spool": {"directory": str(spool), "settle": 0.0, "poll_interval": 0.05},
        "metrics": {"port": -1}})
    bat_xml = shared_file(BAT).read_bytes()
    event = parse_notice(bat_xml, source="test", **notice_options(config))
    wire = shared_file(RUBIN).read_bytes()
    record = fastavro.schemaless_reader(io.BytesIO(wire[5:]), get_schema(900).definition,
                                        None)
    good_alerts = alerts_at(record, 270.6441, 24.4866, event.trigger_mjd_tai + 0.1, 3)
    outside = tmp_path / "outside"
    outside.mkdir()
    linked_notice = drop(outside / "gbm.xml", shared_file(GBM).read_bytes())

    inbox = spool / "in"
    hostile = {  # name under in/ -> how it is made
        "empty.xml": dict(data=b""),
        "notices/empty.json": dict(data=b""),
        "empty.wires": dict(data=b""),
        "alerts/empty.avro": dict(data=b""),
        "truncated.xml": dict(data=bat_xml[:700]),
        "notices/truncated.json": dict(data=shared_file(LVK).read_bytes()[:5000]),
        "alerts/truncated.avro": dict(data=wire[:300]),
        "truncated-container.avro": dict(data=shared_file(CONTAINER).read_bytes()[:2000]),
        "huge.xml": dict(size=HUGE),
        "alerts/huge.avro": dict(size=HUGE),
        "huge.wires": dict(size=HUGE),
        "notice-as.wires": dict(data=bat_xml),
        "alerts-as.xml": dict(data=wire),
        "garbage.json": dict(data=os.urandom(4096)),
        "bomb.xml": dict(data=b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">'
                              b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><x>&b;</x>'),
        "link-to-notice.xml": dict(link=linked_notice),
        "dangling.xml": dict(link=tmp_path / "nowhere.xml"),
        "loop.xml": dict(link="loop.xml"),
        "alerts/zero.wires": dict(link="/dev/zero"),
        "odd\nname with spaces.xml": dict(data=b"<VOEvent/>"),
        "\udcff\udcfe-not-utf8.xml": dict(data=b"{}"),
        ("n" * 246) + ".xml": dict(data=b"not a notice"),
        "-leading-dash.wires": dict(data=b"\x00\x00\x00\x03\x84garbage"),
        "detections/nobody/d.json": dict(data=b'{"partner": "nobody"}'),
        "detections/../escape.json": dict(data=b"{}"),
    }
    for name, how in hostile.items():
        drop(inbox / name, **how)
    now = time.time()
    for name in hostile:  # the hostile files are older: they are handled first
        path = inbox / name
        if not path.is_symlink():
            os.utime(path, (now - 100, now - 100))
    drop(inbox / "notices/bat.xml", bat_xml)
    os.utime(inbox / "notices/bat.xml", (now - 10, now - 10))
    stream = tmp_path / "alerts.wires"
    write_wire_stream(stream, good_alerts)
    drop(inbox / "alerts/night.wires", stream.read_bytes())
    os.utime(inbox / "alerts/night.wires", (now - 5, now - 5))

    service = EmbeddedService(config, Store(f"sqlite:///{tmp_path / 'spool.sqlite'}"))
    service.start()
    problems: list[str] = []  # every way the spool misbehaved, reported together
    tracemalloc.start()
    try:
        deadline = time.monotonic() + DEADLINE
        while files_under(inbox) and time.monotonic() < deadline:
            try:
                handled = service.step()
            except Exception as exc:  # noqa: BLE001 - collected: the step must not raise
                problems.append(f"step() raised {exc!r:.300}")
                if len(problems) > 3:
                    break
                handled = 0
            if handled == 0:
                time.sleep(0.05)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        service.close()

    left = files_under(inbox)
    if left:
        problems.append(f"left in in/: {sorted(left)}")
    if peak >= MEMORY_BOUND:
        problems.append(f"{peak / 2**20:.0f} MiB traced while handling the spool")
    done = files_under(spool / "done")
    if done != {"notices/bat.xml", "alerts/night.wires"}:
        problems.append(f"done/ holds {sorted(done)}")
    failed = files_under(spool / "failed")
    for name in hostile:
        rel = os.path.normpath(name)
        # the reason sits beside the file; a name too long for the suffix is shortened
        reasons = [spool / "failed" / r for r in failed if r.endswith(".reason.txt")
                   and (r == rel + ".reason.txt" or len(os.path.basename(rel)) > 200
                        and r.startswith(rel[:200]))]
        if rel not in failed:
            problems.append(f"{name!r} is not in failed/")
        elif not any(r.read_text(errors="replace").strip() for r in reasons):
            problems.append(f"{name!r} has no reason in failed/")
    matches = spool / "out" / "matches.jsonl"
    reports = [json.loads(line) for line in
               (matches.read_text().splitlines() if matches.exists() else [])]
    if {(r["event_id"], r["alert_id"]) for r in reports} != {
            (event.event_id, 7000 + k) for k in range(3)}:
        problems.append(f"reports: {[(r['event_id'], r['alert_id']) for r in reports]}")
    assert not problems, "\n".join(problems)
