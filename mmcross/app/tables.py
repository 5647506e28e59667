"""Plain-text tables and the replay summary the ``mmcross`` commands print."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mmcross.model.match import Match


def print_table(rows: list[dict], columns: Sequence[str]) -> None:
    """Print ``rows`` as left-aligned columns under a header, or ``(none)``."""
    if not rows:
        print("(none)")
        return
    text = [[format_value(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for t in text:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)))


def format_value(value) -> str:
    """A table cell: floats to 4 significant digits, ``None`` as empty."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def print_replay_summary(summary, out: Path, db: str) -> None:
    """Print a replay's :class:`~mmcross.app.replay.ReplaySummary` and a table per event
    read back from ``out/matches.jsonl``."""
    refused = ", ".join(f"{k} {v}" for k, v in sorted(summary.notice_errors.items())) or "none"
    print(f"notices applied: {summary.notices} (refused: {refused})")
    print(f"alerts: {summary.alerts} ({summary.alert_errors} unreadable), "
          f"{summary.alerts_per_second:,.0f} alerts/s over {summary.seconds:.1f} s")
    print(f"matches: {summary.matches}, revoked: {summary.revoked}")
    if summary.coincidences or summary.coincidences_revoked:
        print(f"coincidences: {summary.coincidences}, revoked: {summary.coincidences_revoked}"
              f" ({out / 'coincidences.jsonl'})")
    print(f"reports: {out / 'matches.jsonl'}, {out / 'voevents'}/, store: {db}")
    rows = []
    for line in (out / "matches.jsonl").read_text().splitlines() if (
            out / "matches.jsonl").exists() else []:
        m = Match(**json.loads(line))
        rows.append(m)
    per_event: dict[str, dict] = {}
    for m in rows:
        r = per_event.setdefault(m.event_id, {
            "event": m.event_id, "kind": m.event_kind, "instrument": m.instrument,
            "matches": 0, "revoked": 0, "best_cl": None, "min_p_chance": None})
        if m.retracted:
            r["revoked"] += 1
            continue
        r["matches"] += 1
        r["best_cl"] = m.credible_level if r["best_cl"] is None else min(
            r["best_cl"], m.credible_level)
        r["min_p_chance"] = m.p_chance if r["min_p_chance"] is None else min(
            r["min_p_chance"], m.p_chance)
    print()
    print_table(list(per_event.values()),
                 ["event", "kind", "instrument", "matches", "revoked", "best_cl", "min_p_chance"])
