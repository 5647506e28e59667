"""Rubin alert schemas by id from a Confluent Schema Registry, else from lsst-alert-packet.

With ``[kafka] schema_registry_url`` set, the schema of an unseen id is fetched once with the
Confluent REST API (``GET <url>/schemas/ids/<id>`` -> ``{"schema": "<Avro schema JSON>"}``)
and kept; when the registry does not know the id (HTTP 404) or cannot be reached, the
schemas shipped by lsst-alert-packet (:mod:`mmcross.brokers.rubin_schemas`) answer instead. A failed
look-up is not retried for ``retry_after`` seconds, so a registry outage costs one request per
id per minute, not one per message.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request

from mmcross.brokers.alert_decoding import (
    AlertRow,
    decode_rubin_body,
    decode_rubin_body_fastavro,
    decode_wire_row,
    split_wire,
)
from mmcross.brokers.rubin_schemas import (
    RubinSchema,
    build_schema,
    get_schema,
    known_schema_ids,
    schema_id_from_name,
)
from mmcross.model.errors import BadAlertError

log = logging.getLogger(__name__)

ACCEPT = "application/vnd.schemaregistry.v1+json, application/json"


class SchemaResolver:
    """Schema id -> :class:`RubinSchema`: the registry first (when set), then the package.

    Args:
        registry_url: base URL of a Confluent Schema Registry (``None``/empty: none).
        timeout: seconds per HTTP request.
        retry_after: seconds before an id the registry failed on is asked again.
    """

    def __init__(self, registry_url: str | None = None, *, timeout: float = 5.0,
                 retry_after: float = 60.0) -> None:
        self.registry_url = (registry_url or "").rstrip("/") or None
        self.timeout = timeout
        self.retry_after = retry_after
        self._cache: dict[int, RubinSchema] = {}
        # Schemas equal to a package schema decode with its compiled kernel.
        self._kernel: dict[int, RubinSchema | None] = {}
        self._failed: dict[int, float] = {}
        self.fetched = 0

    def get(self, schema_id: int, source: str = "") -> RubinSchema:
        """The schema of ``schema_id``.

        Raises:
            BadAlertError: neither the registry nor lsst-alert-packet has it.
        """
        schema = self._cache.get(schema_id)
        if schema is not None:
            return schema
        if self.registry_url and time.monotonic() >= self._failed.get(schema_id, -1e18):
            schema = self._fetch(schema_id)
            if schema is not None:
                self._cache[schema_id] = schema
                self._kernel[schema_id] = _same_package_schema(schema)
                return schema
            self._failed[schema_id] = time.monotonic() + self.retry_after
        schema = get_schema(schema_id, source=source)
        self._cache[schema_id] = schema
        self._kernel[schema_id] = schema
        return schema

    def native(self, schema_id: int) -> bool:
        """True when ``schema_id`` decodes as lsst-alert-packet's own id (bulk fast path):
        no registry, or the registry's schema is the package's schema of the same id, or
        the id is unknown everywhere (the bulk decoder refuses it the same way)."""
        try:
            self.get(schema_id)
        except BadAlertError:
            return True
        same = self._kernel.get(schema_id)
        return same is not None and same.schema_id == schema_id

    def _fetch(self, schema_id: int) -> RubinSchema | None:
        url = f"{self.registry_url}/schemas/ids/{schema_id}"
        request = urllib.request.Request(url, headers={"Accept": ACCEPT})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310
                payload = json.loads(resp.read())
            definition = json.loads(payload["schema"])
            name = str(definition.get("name", ""))
            sid = schema_id_from_name(name)
            version = f"{sid // 100}.{sid % 100}" if sid is not None else str(schema_id)
            schema = build_schema(schema_id, version, definition)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                log.info("schema id %d not in the registry %s: using lsst-alert-packet",
                         schema_id, self.registry_url)
            else:
                log.warning("schema registry %s answered %s for id %d: using "
                            "lsst-alert-packet", self.registry_url, exc.code, schema_id)
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("schema registry %s unusable for id %d (%s): using lsst-alert-packet",
                        self.registry_url, schema_id, exc)
            return None
        self.fetched += 1
        log.info("schema id %d (%s) fetched from %s", schema_id, name, self.registry_url)
        return schema

    def decode_row(self, message: bytes, source: str = "", *,
                   keep_packet: bool = True) -> AlertRow:
        """Decode one wire-format Rubin alert with the schema of its id.

        Raises:
            BadAlertError: not wire format, unknown schema id, undecodable prefix.
        """
        source = source or "alert"
        schema_id, body = split_wire(message, source)
        schema = self.get(schema_id, source)
        packet = bytes(message) if keep_packet else None
        same = self._kernel.get(schema_id)
        if same is not None and same.schema_id == schema_id:
            return decode_wire_row(message, source, keep_packet=keep_packet)
        if same is not None:  # a package schema under another id: its kernel
            return decode_rubin_body(body, same, source, packet)
        return decode_rubin_body_fastavro(body, schema, source, packet)


def _same_package_schema(schema: RubinSchema) -> RubinSchema | None:
    """The lsst-alert-packet schema with the same name and definition, if any."""
    sid = schema_id_from_name(schema.name)
    if sid is None or sid not in known_schema_ids():
        return None
    package = get_schema(sid)
    return package if package.definition == schema.definition else None
