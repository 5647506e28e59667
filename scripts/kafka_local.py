#!/usr/bin/env python3
"""Run a real single-node Apache Kafka broker (KRaft, broker+controller) on 127.0.0.1.

For tests and benchmarks. The broker jars of a pinned Kafka release are fetched from Maven
Central with ``mvn dependency:copy-dependencies`` on ``scripts/kafka-pom.xml`` (the Apache
download mirrors are not reachable here, so no tarball) and cached in
``$MMCROSS_KAFKA_HOME`` (default ``~/.cache/mmcross/kafka-<version>``).

Command line (prints ``KAFKA_BOOTSTRAP=127.0.0.1:<port>`` on stdout after ``start``)::

    python scripts/kafka_local.py fetch
    python scripts/kafka_local.py start   [--dir DIR] [--port 0] [--timeout 60]
    python scripts/kafka_local.py restart [--dir DIR]
    python scripts/kafka_local.py stop    [--dir DIR]
    python scripts/kafka_local.py status  [--dir DIR]

As a library::

    kafka = LocalKafka(tmp_dir)
    kafka.start()            # returns the bootstrap string "127.0.0.1:<port>"
    kafka.restart()          # same ports, same data
    kafka.stop()

State lives in DIR: ``server.properties``, ``log4j2.properties``, ``kafka.log`` (broker stdout
and stderr), ``kafka.pid``, ``local-kafka.json`` (ports and cluster id, so that ``restart``
and a later ``start`` keep the same address and data) and ``data/`` (log.dirs).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from mmcross.model.errors import MmcrossError

logger = logging.getLogger(__name__)

KAFKA_VERSION = "4.3.1"
"""Pinned Apache Kafka release (org.apache.kafka:kafka_2.13 on Maven Central)."""

LOG4J_VERSION = "2.25.4"
"""log4j2 release of the slf4j binding; the one kafka 4.3.1 itself depends on."""

POM = Path(__file__).resolve().with_name("kafka-pom.xml")
HOST = "127.0.0.1"
DEFAULT_HEAP = "512m"
DEFAULT_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
_COMPLETE = ".complete"
_STATE = "local-kafka.json"


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when its parent exits."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalKafkaError(MmcrossError):
    """The local Kafka broker could not be fetched, formatted, started or stopped."""


class KafkaUnavailableError(LocalKafkaError):
    """A prerequisite is missing on this machine (java, mvn, or the jars cannot be fetched)."""


# --------------------------------------------------------------------------------------------
# Jars


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    """The jar cache folder: ``$MMCROSS_KAFKA_HOME`` or ``~/.cache/mmcross/kafka-<version>``."""
    env = os.environ.get("MMCROSS_KAFKA_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mmcross" / f"kafka-{version}"


def java_executable() -> str:
    """Path of ``java`` (``$JAVA_HOME/bin/java`` first); raises if none or older than 17."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    java = str(candidate) if candidate and candidate.exists() else shutil.which("java")
    if not java:
        raise KafkaUnavailableError("java not found on PATH (Kafka 4 needs Java 17 or newer)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)', out.stderr + out.stdout)
    if not match or int(match.group(1)) < 17:
        raise KafkaUnavailableError(f"{java} is not Java 17 or newer: {out.stderr.strip()!r}")
    return java


def fetch_jars(version: str = KAFKA_VERSION, home: Path | None = None) -> Path:
    """Download the broker jars of Kafka ``version`` once; return the folder holding them.

    Runs ``mvn dependency:copy-dependencies`` on ``scripts/kafka-pom.xml`` into a temporary
    folder renamed into place when complete, so an interrupted fetch is retried next time.
    """
    home = home or kafka_home(version)
    libs = home / "libs"
    if (libs / _COMPLETE).exists():
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise KafkaUnavailableError("mvn (Apache Maven) not found on PATH: cannot fetch Kafka")
    home.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="libs-", dir=home))
    cmd = [
        mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
        f"-Dkafka.version={version}", f"-Dlog4j.version={LOG4J_VERSION}",
        f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
    ]
    logger.info("fetching Kafka %s jars into %s", version, libs)
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0 or not list(tmp.glob(f"kafka_2.13-{version}.jar")):
        shutil.rmtree(tmp, ignore_errors=True)
        tail = "\n".join((out.stdout + out.stderr).splitlines()[-20:])
        raise KafkaUnavailableError(
            f"mvn could not fetch org.apache.kafka:kafka_2.13:{version} "
            f"(exit {out.returncode}):\n{tail}"
        )
    (tmp / _COMPLETE).write_text(f"{version}\n")
    try:
        tmp.rename(libs)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (libs / _COMPLETE).exists():
            raise
    logger.info("fetched %d jars in %.1f s", len(list(libs.glob("*.jar"))),
                time.monotonic() - started)
    return libs


def classpath(libs: Path) -> str:
    """The Java class path of every jar in ``libs``."""
    return os.pathsep.join(str(p) for p in sorted(libs.glob("*.jar")))


# --------------------------------------------------------------------------------------------
# Broker


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def random_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (22 chars)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # as Kafka's Uuid.randomUuid: avoid a CLI-like "-..."
            return text


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited child not yet reaped) counts as dead
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class LocalKafka:
    """A single-node KRaft Kafka broker on 127.0.0.1, its state kept in ``directory``.

    ``port`` (PLAINTEXT listener) and the controller port are chosen free at the first start
    when 0, then remembered in ``directory/local-kafka.json``: a restart, or a later
    ``LocalKafka`` on the same directory, keeps the same bootstrap address and the data.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        port: int = 0,
        *,
        version: str = KAFKA_VERSION,
        heap: str = DEFAULT_HEAP,
        timeout: float = DEFAULT_TIMEOUT,
        extra_properties: dict[str, str] | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.version = version
        self.heap = heap
        self.timeout = timeout
        self.extra_properties = dict(extra_properties or {})
        self._proc: subprocess.Popen[bytes] | None = None
        # Tests start brokers that must not outlive a killed test run (Linux: PR_SET_PDEATHSIG).
        self.die_with_parent = die_with_parent
        state = self._read_state()
        self.port = int(state.get("port", port))
        self.controller_port = int(state.get("controller_port", 0))
        self.cluster_id: str | None = state.get("cluster_id")

    # -- paths and state -----------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<port>`` of the PLAINTEXT listener (port 0 before the first start)."""
        return f"{HOST}:{self.port}"

    @property
    def log_file(self) -> Path:
        """Broker stdout and stderr."""
        return self.directory / "kafka.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "kafka.pid"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    def _read_state(self) -> dict:
        path = self.directory / _STATE
        return json.loads(path.read_text()) if path.exists() else {}

    def _write_state(self) -> None:
        state = {"port": self.port, "controller_port": self.controller_port,
                 "cluster_id": self.cluster_id, "version": self.version}
        (self.directory / _STATE).write_text(json.dumps(state, indent=1) + "\n")

    def pid(self) -> int | None:
        """Pid of the running broker, or None."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of ``kafka.log``."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no kafka.log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- configuration ------------------------------------------------------------------------
    def properties(self) -> dict[str, str]:
        """The ``server.properties`` of a single-node broker+controller with small footprint."""
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "auto.create.topics.enable": "true",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        props.update(self.extra_properties)
        return props

    def _write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        (self.directory / "log4j2.properties").write_text(
            "status = warn\n"
            "appender.out.type = Console\n"
            "appender.out.name = STDOUT\n"
            "appender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.out.ref = STDOUT\n"
            "logger.kafka.name = kafka\nlogger.kafka.level = INFO\n"
            "logger.state.name = state.change.logger\nlogger.state.level = WARN\n"
            "logger.request.name = kafka.request.logger\nlogger.request.level = WARN\n"
        )
        return path

    def _java_base(self, libs: Path, java: str) -> list[str]:
        return [
            java, f"-Xmx{self.heap}", "-Xms64m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:MaxDirectMemorySize=256m", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
            "-cp", classpath(libs),
        ]

    def _format(self, libs: Path, java: str, config: Path) -> None:
        self.cluster_id = self.cluster_id or random_cluster_id()
        cmd = [*self._java_base(libs, java), "kafka.tools.StorageTool", "format",
               "-t", self.cluster_id, "-c", str(config)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise LocalKafkaError(
                f"kafka StorageTool format failed in {self.data_dir} (exit {out.returncode}):\n"
                f"{(out.stdout + out.stderr)[-3000:]}"
            )
        logger.info("formatted %s with cluster id %s", self.data_dir, self.cluster_id)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> str:
        """Start the broker (formatting storage on first use); return the bootstrap string.

        Blocks until an AdminClient ``list_topics`` answers, at most ``timeout`` seconds.
        Does nothing but return the address when a broker of this directory already runs.
        """
        if self.is_running():
            logger.info("Kafka already running in %s at %s", self.directory, self.bootstrap)
            return self.bootstrap
        java = java_executable()
        libs = fetch_jars(self.version)
        formatted = (self.data_dir / "meta.properties").exists()
        if formatted and not self.controller_port:
            raise LocalKafkaError(
                f"{self.data_dir} is formatted but {self.directory / _STATE} is missing: "
                "remove the directory to start afresh"
            )
        self.port = self.port or free_port()
        self.controller_port = self.controller_port or free_port()
        config = self._write_config()
        if not formatted:
            self._format(libs, java, config)
        self._write_state()
        cmd = [*self._java_base(libs, java), "kafka.Kafka", str(config)]
        started = time.monotonic()
        with open(self.log_file, "ab") as log:
            log.write(f"\n==== mmcross kafka_local start {time.ctime()} ====\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.directory, start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        try:
            self._wait_ready(started)
        except LocalKafkaError:
            self.stop()
            raise
        logger.info("Kafka %s up at %s in %.1f s (pid %d)", self.version, self.bootstrap,
                    time.monotonic() - started, self._proc.pid)
        return self.bootstrap

    def _wait_ready(self, started: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = started + self.timeout
        admin = None
        while time.monotonic() < deadline:
            if not self.is_running():
                raise LocalKafkaError(
                    f"Kafka broker in {self.directory} exited during startup "
                    f"(exit {self._proc.poll() if self._proc else '?'}); "
                    f"tail of {self.log_file}:\n{self.log_tail()}"
                )
            try:  # silent TCP probe first: librdkafka logs every refused connection
                with socket.create_connection((HOST, self.port), timeout=1):
                    pass
            except OSError:
                time.sleep(0.2)
                continue
            if admin is None:
                admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 3})
            try:
                metadata = admin.list_topics(timeout=2)
                if metadata.brokers:
                    return
            except Exception as exc:  # KafkaException while the broker is still coming up
                logger.debug("broker not ready yet: %s", exc)
            time.sleep(0.2)
        raise LocalKafkaError(
            f"Kafka broker in {self.directory} did not answer at {self.bootstrap} within "
            f"{self.timeout:.0f} s; tail of {self.log_file}:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the broker: SIGTERM (controlled shutdown), then SIGKILL after ``timeout`` s."""
        pid = self.pid()
        if pid is None:
            self._proc = None
            self.pid_file.unlink(missing_ok=True)
            return
        logger.info("stopping Kafka pid %d in %s", pid, self.directory)
        os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout):
            logger.warning("Kafka pid %d ignored SIGTERM for %.0f s: SIGKILL", pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_exit(pid, 10)
        self._proc = None
        self.pid_file.unlink(missing_ok=True)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                try:
                    self._proc.wait(timeout=0.2)
                    return True
                except subprocess.TimeoutExpired:
                    continue
            if not _pid_alive(pid):
                return True
            time.sleep(0.2)
        return False

    def kill(self) -> None:
        """SIGKILL the broker (an unclean stop: it recovers its logs at the next start)."""
        pid = self.pid()
        if pid is None:
            return
        logger.info("killing Kafka pid %d in %s", pid, self.directory)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self._wait_exit(pid, 30)
        self._proc = None
        self.pid_file.unlink(missing_ok=True)

    def restart(self, *, hard: bool = False) -> str:
        """Stop (SIGKILL when ``hard``) then start again on the same ports with the same
        data; return the bootstrap."""
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start()

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Command line


def _default_dir() -> Path:
    env = os.environ.get("MMCROSS_KAFKA_DIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / "mmcross-kafka"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="only download the jars into the cache")
    for name in ("start", "restart", "stop", "status"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--dir", type=Path, default=_default_dir(),
                         help="state folder (default $MMCROSS_KAFKA_DIR or $TMPDIR/mmcross-kafka)")
        if name in ("start", "restart"):
            cmd.add_argument("--port", type=int, default=0, help="PLAINTEXT port (0: free one)")
            cmd.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
            cmd.add_argument("--heap", default=DEFAULT_HEAP, help="JVM -Xmx (default 512m)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.command == "fetch":
            started = time.monotonic()
            libs = fetch_jars()
            print(f"KAFKA_LIBS={libs}")
            logger.info("jars ready in %.1f s", time.monotonic() - started)
            return 0
        kafka = LocalKafka(args.dir, getattr(args, "port", 0),
                           heap=getattr(args, "heap", DEFAULT_HEAP),
                           timeout=getattr(args, "timeout", DEFAULT_TIMEOUT))
        if args.command == "stop":
            kafka.stop()
        elif args.command == "status":
            pid = kafka.pid()
            print(f"KAFKA_BOOTSTRAP={kafka.bootstrap}" if pid else "stopped")
            return 0 if pid else 1
        else:
            if args.command == "restart":
                kafka.stop()
            kafka.start()
            print(f"KAFKA_BOOTSTRAP={kafka.bootstrap}", flush=True)
    except LocalKafkaError as exc:
        print(f"kafka_local: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
