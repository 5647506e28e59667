"""Exception hierarchy: one base class, one subclass per kind of refusal.

Messages say what was wrong and where it came from (file, topic/partition/offset, peer).
"""


class MmcrossError(Exception):
    """Base class of every error mmcross raises on purpose."""


class BadNoticeError(MmcrossError):
    """A GCN notice (VOEvent XML or JSON) that cannot be parsed or lacks required fields."""


class UnsupportedMissionError(BadNoticeError):
    """A well-formed notice from a mission or packet type mmcross does not handle."""


class NotAnEventError(BadNoticeError):
    """A well-formed notice that is not an astrophysical event (test role, iamalive, ...)."""


class BadSkymapError(MmcrossError):
    """A sky map that is malformed, oversized, or whose probabilities are not normalisable."""


class BadAlertError(MmcrossError):
    """An optical alert packet that cannot be decoded (bad Avro, unknown schema id, ...).

    Given ``source``, the message reads ``"<source>: <reason>"``.

    Attributes:
        reason: what was wrong, without the source.
        source: where the packet came from (``"file.avro#3"``, ``"topic/0/1234"``), or ``""``.
        index: position of the message in the batch decoded together, or of the record in
            its file; ``None`` when not known (one packet, a whole file).
        truncated: the packet ended before the decoder was done (a longer read of the same
            message may decode).
    """

    def __init__(self, reason: str, *, source: str = "", index: int | None = None,
                 truncated: bool = False) -> None:
        super().__init__(f"{source}: {reason}" if source else reason)
        self.reason = reason
        self.source = source
        self.index = index
        self.truncated = truncated


class BadCoordinatesError(MmcrossError):
    """Coordinates out of range: RA outside [0, 360) deg or Dec outside [-90, 90] deg."""


class RefusedSubmissionError(MmcrossError):
    """A partner submission refused (credential, size, schema)."""


class ConfigError(MmcrossError):
    """A configuration file or option that is invalid."""


class StoreError(MmcrossError):
    """A persistence failure in the catalogs layer."""
