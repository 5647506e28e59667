"""confluent-kafka client configurations from the ``[kafka]`` config table and ``KAFKA_*``.

Like gcn-kafka's ``get_config``, each builder starts from what the operator gave and fills
the defaults in with ``setdefault``, so any default can be overridden. What the operator gives
is merged in this order (later wins):

1. ``[kafka.properties]`` of the config file: librdkafka keys for every client
   (e.g. ``"security.protocol" = "SASL_SSL"``), and ``[kafka] bootstrap_servers``;
2. ``KAFKA_*`` environment variables, read by :func:`gcn_kafka.config_from_env`
   (``KAFKA_BOOTSTRAP_SERVERS`` -> ``bootstrap.servers``, ``__`` -> ``-``, ``___`` -> ``_``);
3. explicit overrides (the command line's ``--bootstrap-servers``).

The alert consumer also reads ``[kafka.alert_properties]`` (consumer-only keys such as
``session.timeout.ms`` or ``group.instance.id``, for static group membership).

The GCN notice consumer additionally reads ``[kafka.gcn.properties]`` and ``GCN_KAFKA_*``
variables, and gets its credentials (client id/secret, domain) from ``[kafka.gcn]``; without
a client id it talks to the same broker as the alerts (a local broker, for tests).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from typing import Any

from gcn_kafka import config_from_env

from mmcross.model.config import Config
from mmcross.model.errors import ConfigError

ENV_PREFIX = "KAFKA_"
GCN_ENV_PREFIX = "GCN_KAFKA_"


def _strings(table: Any, where: str) -> dict[str, Any]:
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table of librdkafka properties, got {table!r}")
    return {str(k): v for k, v in table.items()}


def base_properties(config: Config, *, env: Mapping[str, str] | None = None,
                    overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Properties shared by every client: config file < ``KAFKA_*`` env < ``overrides``."""
    props: dict[str, Any] = {}
    servers = config.get("kafka.bootstrap_servers", "")
    if servers:
        props["bootstrap.servers"] = servers
    props.update(_strings(config.get("kafka.properties"), "[kafka.properties]"))
    props.update(config_from_env(os.environ if env is None else env, prefix=ENV_PREFIX))
    props.update({k: v for k, v in (overrides or {}).items() if v is not None})
    # Broker down: reconnect with a back-off growing to 10 s, not 10 times a second.
    props.setdefault("reconnect.backoff.ms", 500)
    props.setdefault("reconnect.backoff.max.ms", 10_000)
    return props


def kafka_configured(config: Config, *, env: Mapping[str, str] | None = None,
                     overrides: Mapping[str, Any] | None = None) -> bool:
    """True when a bootstrap server is known (else the service runs on files)."""
    return bool(base_properties(config, env=env, overrides=overrides).get("bootstrap.servers"))


def _require_servers(props: dict[str, Any], what: str) -> dict[str, Any]:
    if not props.get("bootstrap.servers"):
        raise ConfigError(
            f"no Kafka bootstrap servers for the {what}: set [kafka] bootstrap_servers, "
            "KAFKA_BOOTSTRAP_SERVERS or --bootstrap-servers")
    return props


def alert_consumer_config(config: Config, *, env: Mapping[str, str] | None = None,
                          overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The alert stream consumer: one consumer group shared by every ``mmcross listen``.

    Offsets are committed by the service only (no auto-commit, no auto offset store), in the
    transaction holding the reports the alerts caused; it reads committed records only.
    """
    props = base_properties(config, env=env, overrides=overrides)
    props.update(_strings(config.get("kafka.alert_properties"), "[kafka.alert_properties]"))
    props.update({k: v for k, v in (overrides or {}).items() if v is not None})
    _require_servers(props, "alert consumer")
    props.setdefault("group.id", config.get("kafka.group_id", "mmcross"))
    props.setdefault("enable.auto.commit", False)
    props.setdefault("enable.auto.offset.store", False)
    props.setdefault("auto.offset.reset", "earliest")
    props.setdefault("isolation.level", "read_committed")
    props.setdefault("partition.assignment.strategy", "cooperative-sticky")
    props.setdefault("fetch.max.bytes", 64 << 20)
    props.setdefault("max.partition.fetch.bytes", 16 << 20)
    return props


def instance_name(config: Config) -> str:
    """``[kafka] instance``: this process's name among the listeners of one group (default:
    the host name). Two processes of one group must have different names."""
    return str(config.get("kafka.instance", "") or socket.gethostname())


def transactional_id(config: Config) -> str:
    """``[kafka] transactional_id``, default ``<group id>.<instance>``: stable across restarts
    of one instance, so that a restart fences its zombie and resolves its open transaction."""
    explicit = config.get("kafka.transactional_id", "")
    if explicit:
        return str(explicit)
    return f"{config.get('kafka.group_id', 'mmcross')}.{instance_name(config)}"


def producer_config(config: Config, *, env: Mapping[str, str] | None = None,
                    overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The transactional producer of reports, counterpart VOEvents, dead letters and partner
    matches (``transactional.id`` from :func:`transactional_id`)."""
    props = _require_servers(base_properties(config, env=env, overrides=overrides),
                             "report producer")
    props.setdefault("transactional.id", transactional_id(config))
    props.setdefault("transaction.timeout.ms", 60_000)
    props.setdefault("acks", "all")
    props.setdefault("linger.ms", 20)
    props.setdefault("compression.type", "zstd")
    props.setdefault("message.max.bytes", 16 << 20)
    return props


def reader_config(config: Config, *, env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A consumer that reads by assignment, committed records only, and never commits."""
    props = _require_servers(base_properties(config, env=env, overrides=overrides), "reader")
    props.setdefault("group.id", f"mmcross-reader-{uuid.uuid4().hex}")
    props.setdefault("enable.auto.commit", False)
    props.setdefault("isolation.level", "read_committed")
    return props


def gcn_consumer_config(config: Config, *, env: Mapping[str, str] | None = None,
                        overrides: Mapping[str, Any] | None = None
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(properties, credentials) for :class:`gcn_kafka.Consumer` reading GCN notices.

    With ``[kafka.gcn] client_id`` set, the broker is GCN's (``kafka.<domain>``) unless
    ``[kafka.gcn] bootstrap_servers`` says otherwise; without it, the alert broker. The group
    id is ``[kafka.gcn] group_id`` when set (a stable id per process: it resumes from its
    commits), else unique per process start, reading from the earliest retained notice, so
    that every process sees every event (known ones are dropped as duplicates).

    Returns:
        librdkafka properties, and the keyword arguments ``client_id``, ``client_secret``,
        ``domain`` of :class:`gcn_kafka.Consumer` (``None`` when not configured).
    """
    env = os.environ if env is None else env
    gcn = config.get("kafka.gcn", {}) or {}
    client_id = gcn.get("client_id") or None
    creds = {"client_id": client_id, "client_secret": gcn.get("client_secret") or None,
             "domain": gcn.get("domain") or None}
    if client_id:
        props: dict[str, Any] = {}
        props.update(_strings(config.get("kafka.properties"), "[kafka.properties]"))
    else:
        props = base_properties(config, env=env, overrides=overrides)
        props.setdefault("security.protocol", "PLAINTEXT")
    if gcn.get("bootstrap_servers"):
        props["bootstrap.servers"] = gcn["bootstrap_servers"]
    props.update(_strings(gcn.get("properties"), "[kafka.gcn.properties]"))
    props.update(config_from_env(env, prefix=GCN_ENV_PREFIX))
    if not client_id:
        _require_servers(props, "GCN notice consumer")
    props.setdefault("group.id", gcn.get("group_id") or f"mmcross-notices-{uuid.uuid4().hex}")
    props.setdefault("enable.auto.commit", False)
    props.setdefault("auto.offset.reset", "earliest")
    props.setdefault("isolation.level", "read_committed")
    props.setdefault("max.partition.fetch.bytes", 64 << 20)
    return props, creds
