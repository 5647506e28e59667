"""Match reports as columns: :class:`MatchBatch`, the form the engine hands to the sinks.

One numpy array per :class:`~mmcross.model.match.Match` field; rows become ``Match`` objects
only when a caller asks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from mmcross.model.match import MATCH_FIELDS, Match

_FLOAT_FIELDS = ("ra", "dec", "time_offset", "credible_level", "searched_area", "prob_density",
                 "distance_mean", "distance_std", "p_chance")
_INT_FIELDS = ("event_revision", "alert_id", "supersedes_revision")
NO_REVISION = -1  # supersedes_revision of a report that supersedes nothing


def _column_dtype(name: str) -> Any:
    if name in _FLOAT_FIELDS:
        return np.float64
    if name in _INT_FIELDS:
        return np.int64
    return bool if name == "retracted" else object


@dataclass(frozen=True)
class Coded:
    """A dictionary-encoded column: row ``i`` holds ``values[codes[i]]`` (as Arrow's
    DictionaryArray). The matcher gives the columns a report takes from its event, and the
    alert time, this way: one value per event or alert, not per match. With ``render``,
    ``values`` are raw values (e.g. MJD TAI) turned into the column's values by
    ``render(values)`` only when the column is read.
    """

    codes: np.ndarray  # int64, one per row
    values: np.ndarray  # the distinct values (raw when ``render`` is set)
    render: Callable[[np.ndarray], np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.codes)

    def take(self, rows: np.ndarray) -> Coded:
        """The rows at ``rows`` (positions or a mask), still encoded."""
        return Coded(self.codes[rows], self.values, self.render)

    def distinct(self) -> np.ndarray:
        """The distinct values, rendered."""
        return self.values if self.render is None else self.render(self.values)

    def decode(self) -> np.ndarray:
        """The plain column."""
        if self.render is not None:  # render only the values some row uses
            used = np.zeros(len(self.values), bool)
            used[self.codes] = True
            rows = np.flatnonzero(used)
            remap = np.empty(len(self.values), np.int64)
            remap[rows] = np.arange(len(rows))
            return self.render(self.values[rows])[remap[self.codes]]
        return self.values[self.codes]


Column = np.ndarray | Coded


class MatchBatch(Sequence[Match]):
    """Match reports as columns: one array per :class:`Match` field, one row per report.

    The engine, the matcher and the sinks pass these; nothing builds a :class:`Match` per
    row unless a caller asks (indexing or iterating yields :class:`Match` records;
    :meth:`records` yields plain dicts, the form the JSON, Avro and SQL writers take).
    A column may be given dictionary-encoded (:class:`Coded`); :attr:`columns` decodes it on
    first use. Optional values are stored as NaN (``distance_mean``, ``distance_std``) and
    :data:`NO_REVISION` (``supersedes_revision``) and come out as ``None``. Units and frames
    are those of :class:`Match` (degrees ICRS, days, deg^2, per deg^2, Mpc).

    >>> batch = MatchBatch.from_matches([])
    >>> len(batch), batch == []
    (0, True)
    """

    __slots__ = ("_data", "_length")

    def __init__(self, columns: Mapping[str, Column]) -> None:
        missing = [f for f in MATCH_FIELDS if f not in columns]
        if missing:
            raise ValueError(f"MatchBatch: missing columns {missing}")
        lengths = {len(columns[f]) for f in MATCH_FIELDS}
        if len(lengths) > 1:
            raise ValueError(f"MatchBatch: columns of different lengths {sorted(lengths)}")
        self._data: dict[str, Column] = {}
        for f in MATCH_FIELDS:
            column = columns[f]
            if isinstance(column, Coded):
                self._data[f] = column
            else:
                self._data[f] = np.asarray(column, dtype=_column_dtype(f))
        self._length = lengths.pop()

    @property
    def columns(self) -> dict[str, np.ndarray]:
        """Every column as a plain array (dictionary-encoded ones decoded, once)."""
        for name, column in self._data.items():
            if isinstance(column, Coded):
                self._data[name] = column.decode()
        return self._data  # type: ignore[return-value]

    def column(self, name: str) -> np.ndarray:
        """One column as a plain array (decoded once if dictionary-encoded)."""
        column = self._data[name]
        if isinstance(column, Coded):
            column = self._data[name] = column.decode()
        return column

    # -- construction --------------------------------------------------------------------

    @classmethod
    def empty(cls) -> MatchBatch:
        """A batch with no rows."""
        return cls({f: np.empty(0, _column_dtype(f)) for f in MATCH_FIELDS})

    @classmethod
    def from_matches(cls, matches: Iterable[Match]) -> MatchBatch:
        """Columns of existing :class:`Match` records (in order)."""
        if isinstance(matches, MatchBatch):
            return matches
        rows = [m.to_record() for m in matches]
        if not rows:
            return cls.empty()
        columns: dict[str, np.ndarray] = {}
        for name in MATCH_FIELDS:
            values = [r[name] for r in rows]
            if name in ("distance_mean", "distance_std"):
                values = [np.nan if v is None else v for v in values]
            elif name == "supersedes_revision":
                values = [NO_REVISION if v is None else v for v in values]
            column = np.empty(len(values), _column_dtype(name))
            column[:] = values
            columns[name] = column
        return cls(columns)

    @classmethod
    def concatenate(cls, batches: Iterable[Sequence[Match]]) -> MatchBatch:
        """One batch of the rows of ``batches`` (MatchBatch or lists of Match), in order."""
        parts = [b if isinstance(b, MatchBatch) else cls.from_matches(b) for b in batches]
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls({f: np.concatenate([p.column(f) for p in parts]) for f in MATCH_FIELDS})

    # -- selection and edits -------------------------------------------------------------

    def take(self, rows: np.ndarray) -> MatchBatch:
        """The rows at ``rows`` (integer positions or a boolean mask), as a new batch."""
        return MatchBatch({f: c.take(rows) if isinstance(c, Coded) else c[rows]
                           for f, c in self._data.items()})

    def with_columns(self, **values: Any) -> MatchBatch:
        """A copy with the named columns replaced (a scalar fills the column)."""
        columns = dict(self._data)
        for name, value in values.items():
            if name not in columns:
                raise ValueError(f"MatchBatch: no column {name!r}")
            column = np.empty(len(self), _column_dtype(name))
            column[:] = value
            columns[name] = column
        return MatchBatch(columns)

    def retracted(self) -> MatchBatch:
        """These reports as revocations (``retracted=True``)."""
        return self.with_columns(retracted=True)

    # -- reading -------------------------------------------------------------------------

    @property
    def event_id(self) -> np.ndarray:
        return self.column("event_id")

    @property
    def alert_id(self) -> np.ndarray:
        return self.column("alert_id")

    def keys(self) -> list[str]:
        """``event_id|alert_id`` of every row (the Kafka message key, see :attr:`Match.key`)."""
        return [f"{e}|{a}" for e, a in zip(self.event_id.tolist(), self.alert_id.tolist(),
                                          strict=True)]

    def records(self) -> list[dict[str, Any]]:
        """Every row as a dict of plain Python values (``Match.to_record()`` of each row)."""
        lists = [_as_list(self._data[f]) for f in MATCH_FIELDS]
        for name in ("distance_mean", "distance_std"):
            i = MATCH_FIELDS.index(name)
            lists[i] = [None if v != v else v for v in lists[i]]
        i = MATCH_FIELDS.index("supersedes_revision")
        lists[i] = [None if v == NO_REVISION else v for v in lists[i]]
        return [dict(zip(MATCH_FIELDS, row, strict=True)) for row in zip(*lists, strict=True)]

    def matches(self) -> list[Match]:
        """Every row as a :class:`Match` record."""
        return [Match(**r) for r in self.records()]

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, item: int) -> Match: ...

    @overload
    def __getitem__(self, item: slice) -> MatchBatch: ...

    def __getitem__(self, item: int | slice) -> Match | MatchBatch:
        if isinstance(item, slice):
            return self.take(np.arange(len(self))[item])
        row = self.take(np.array([item]))
        return row.matches()[0]

    def __iter__(self) -> Iterator[Match]:
        return iter(self.matches())

    def __add__(self, other: Sequence[Match]) -> MatchBatch:
        return MatchBatch.concatenate([self, other])

    def __radd__(self, other: Sequence[Match]) -> MatchBatch:
        return MatchBatch.concatenate([other, self])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MatchBatch({len(self)} reports)"


def _as_list(column: Column) -> list[Any]:
    """A column's rows as Python values."""
    if isinstance(column, Coded):
        if column.render is not None:
            return column.decode().tolist()
        values = column.values.tolist()
        return [values[c] for c in column.codes.tolist()]
    return column.tolist()
