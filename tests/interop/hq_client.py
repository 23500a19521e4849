#!/usr/bin/env python3
"""hq-interop client built on aioquic, for interoperability tests of ant-quic.

hq-interop is HTTP/0.9 over QUIC as used by the QUIC interop runner: ALPN
"hq-interop"; for every file the client opens one client-initiated
bidirectional stream, sends ``GET /path\\r\\n`` followed by FIN, and the server
answers with the file's bytes followed by FIN.

Usage::

    python hq_client.py --host 127.0.0.1 --port 4433 --output DIR [--insecure] \\
        /a.bin /sub/b.bin
    python hq_client.py --output DIR --insecure https://127.0.0.1:4433/a.bin ...

Request arguments are either URL paths (``/a.bin``) or full ``https://`` URLs.
All requests travel over ONE connection. With full URLs, ``--host``/``--port``
default to the first URL's host and port; every URL must name the same
host:port (one connection). The path is sent exactly as given (no
normalisation), so ``/../x`` reaches the server as written: that is how
path-traversal refusal is tested.

Output: a successful response for ``/sub/b.bin`` is written to
``DIR/sub/b.bin`` (subdirectories created). Path components ``.`` and ``..``
are dropped when building the output file name, so nothing is ever written
outside DIR. A response is written to ``NAME.part`` while it arrives and
renamed to ``NAME`` once its FIN arrives; a failed stream leaves no file.

One result line per request is printed to stdout, in request order::

    OK <path> <bytes> <sha256-hex>
    RESET <path> <error-code> <bytes-received-before-reset>
    ERROR <path> <reason>

followed by ``SUMMARY ok=N failed=M``. (An empty response closed with FIN
is ``OK <path> 0 e3b0...``: the protocol cannot tell it from an empty file.)

Exit status: 0 when every stream ended with FIN; 1 when at least one stream
was reset (or otherwise failed) while the connection itself worked; 2 when
the connection failed (handshake failure, peer closed it with an error,
idle timeout) or the overall ``--timeout`` (default 60 s) expired.

Certificate verification: by default the server certificate is verified
against ``--ca-file`` (or the system store). ``--insecure`` turns off
certificate chain and host name verification only; the TLS 1.3
CertificateVerify signature is still checked by aioquic (it supports
Ed25519, ECDSA and RSA-PSS signatures), so a server presenting a
self-signed Ed25519 certificate must still prove possession of its key.

Pacing: ``--max-rate BYTES`` keeps the connection's receive window (MAX_DATA) from growing
faster than BYTES per second after the first ``max_data`` (1 MiB), so a large download lasts
as long as a test needs it to; the server is slowed by flow control, not by loss.

Keep-alive: ``--keep-alive S`` sends a PING after S seconds without receiving anything, so a
server hears the client's new address after its NAT moved it to another port.

Many connections: ``--connections N --interval S`` fetches the requests over N separate
connections (each its own UDP socket and handshake), the i-th started ``i * S`` seconds after
the first. Each connection writes into ``DIR/conn-<i>/`` and its result lines are prefixed
with ``CONN <i> `` (e.g. ``CONN 3 OK /a.bin 1024 <sha>``). The exit status is the worst of
all connections'.

Features (tests/interop_features.rs; helpers in features.py):

* ``--key-update-every N``: initiate a 1-RTT key update every N packets (sent plus received),
  each after the previous one completed; prints ``KEY_UPDATES initiated=I completed=C remote=R``
  per connection (``CONN <i> KEY_UPDATES ...`` with several; R: updates the server initiated).
* ``--resume``: with ``--connections N``, the connections run one after another and each after
  the first offers the session ticket the previous one received; every connection prints
  ``CONN <i> SESSION resumed=<bool> early_data=<bool> tickets=<n>``.
* ``--zero-rtt``: with ``--resume``, connections after the first send their requests as 0-RTT
  data, before the handshake completes (``early_data`` then says whether the server took it).
* ``--migrate-after BYTES``: once BYTES arrived, move the connection to a new UDP socket on
  ``--migrate-to HOST`` (default 127.0.0.2) with a new connection ID; prints
  ``MIGRATED local=<addr> bytes_before=<n> bytes_after=<n>`` (bytes received before the move
  and on the new path).
* ``--report-paths``: prints ``PATHS peer=<addr> from_<addr>=<bytes> ... offpath_from_<addr>=<n>
  ...``: the server address the connection ended on (after a move to the server's preferred
  address, RFC 9000 section 9.6, that address), the UDP payload bytes received from each server
  address, and the datagrams received from an address other than the one the client was sending
  to at the time (such as the answer to its PATH_CHALLENGE to the preferred address).

Debugging: ``-v`` logs aioquic's DEBUG output to stderr, ``--qlog DIR``
writes a qlog trace, ``--secrets-log FILE`` writes TLS keys (NSS key log
format) for Wireshark.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import ssl
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import Limit
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
)
from aioquic.quic.logger import QuicFileLogger

from features import KeyUpdater, TicketStore, migrate

ALPN = "hq-interop"
LOG = logging.getLogger("hq_client")


@dataclass
class Request:
    path: str
    out_path: str
    stream_id: int | None = None
    status: str = "PENDING"  # OK | RESET | ERROR
    detail: str = ""
    received: int = 0
    sha: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    fh: object | None = None
    done: asyncio.Future | None = None

    def finish(self, status: str, detail: str = "") -> None:
        if self.status != "PENDING":
            return
        self.status = status
        self.detail = detail
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        part = self.out_path + ".part"
        if status == "OK":
            os.replace(part, self.out_path)
        elif os.path.exists(part):
            os.remove(part)
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def result_line(self) -> str:
        if self.status == "OK":
            return f"OK {self.path} {self.received} {self.sha.hexdigest()}"
        if self.status == "RESET":
            return f"RESET {self.path} {self.detail} {self.received}"
        reason = self.detail or "not completed"
        return f"ERROR {self.path} {reason}"


class PacedLimit(Limit):
    """A MAX_DATA limit that aioquic may raise (it doubles it as data arrives) only up to
    ``initial + rate * elapsed``: the receive window, and so the sender, is held to ``rate``
    bytes per second. It never goes below what was already granted."""

    def __init__(self, base: Limit, rate: float) -> None:
        self._start = time.monotonic()
        self._initial = base.value
        self._rate = rate
        self._value = base.value
        super().__init__(frame_type=base.frame_type, name=base.name, value=base.value)
        self.sent = base.sent
        self.used = base.used

    @property
    def value(self) -> int:
        return self._value

    @value.setter
    def value(self, wanted: int) -> None:
        allowed = self._initial + int(self._rate * (time.monotonic() - self._start))
        self._value = max(self._value, min(wanted, allowed))


class HqClientProtocol(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.requests: dict[int, Request] = {}
        self.terminated: str | None = None
        self._pacer: asyncio.TimerHandle | None = None
        self._keep_alive: asyncio.TimerHandle | None = None
        self._last_received = 0.0
        # features.py: key updates, resumption/0-RTT report, migration
        self.key_updater: KeyUpdater | None = None
        self.session: dict[str, object] = {}
        self.received_total = 0
        self.migrate_after: int | None = None
        self.migrate_to = "127.0.0.2"
        self.migration: asyncio.Future | None = None
        self.received_before_migration = 0
        self.bytes_from: dict[str, int] = {}
        self.offpath_from: dict[str, int] = {}

    def _feature_events(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.session = {"resumed": event.session_resumed, "early_data": event.early_data_accepted}
        if self.key_updater is not None:
            self.key_updater.poll()
        if isinstance(event, StreamDataReceived):
            self.received_total += len(event.data)
            if self.migrate_after is not None and self.migration is None and self.received_total >= self.migrate_after:
                self.received_before_migration = self.received_total
                self.migration = migrate(self, self._loop, self.migrate_to)

    def pace(self, rate: float) -> None:
        """Hold the receive rate to ``rate`` bytes per second (see PacedLimit)."""
        self._quic._local_max_data = PacedLimit(self._quic._local_max_data, rate)
        self._tick()

    def _tick(self) -> None:
        # The window opens with time, not only when data arrives: a blocked sender sends
        # nothing that would make us write the new MAX_DATA, so offer it every 10 ms.
        self.transmit()
        self._pacer = self._loop.call_later(0.01, self._tick)

    def keep_alive(self, interval: float) -> None:
        """Send a PING after ``interval`` seconds without receiving anything, as a client behind a
        NAT should (RFC 9000 section 10.1.2): after the NAT moves it to a new port, a server can
        only learn the new address from a packet the client sends."""
        self._last_received = self._loop.time()
        self._keep_alive_tick(interval)

    def _keep_alive_tick(self, interval: float) -> None:
        if self._loop.time() - self._last_received >= interval:
            self._quic.send_ping(0)
            self._last_received = self._loop.time()
            self.transmit()
        self._keep_alive = self._loop.call_later(interval / 4, self._keep_alive_tick, interval)

    def datagram_received(self, data: bytes | str, addr) -> None:
        self._last_received = self._loop.time()
        source = address_text(addr)
        self.bytes_from[source] = self.bytes_from.get(source, 0) + len(data)
        peer = self._quic.get_peer_address()
        if peer is not None and address_text(peer) != source:
            # from an address this client is not sending to: e.g. the answer to its challenge
            # to the server's preferred address, before it moved there
            self.offpath_from[source] = self.offpath_from.get(source, 0) + 1
        super().datagram_received(data, addr)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._pacer is not None:
            self._pacer.cancel()
        if self._keep_alive is not None:
            self._keep_alive.cancel()
        super().connection_lost(exc)

    def fetch(self, req: Request) -> None:
        sid = self._quic.get_next_available_stream_id(is_unidirectional=False)
        req.stream_id = sid
        req.done = self._loop.create_future()
        os.makedirs(os.path.dirname(req.out_path), exist_ok=True)
        req.fh = open(req.out_path + ".part", "wb")
        self.requests[sid] = req
        LOG.debug("stream %d: GET %s", sid, req.path)
        self._quic.send_stream_data(
            sid, f"GET {req.path}\r\n".encode("utf-8"), end_stream=True
        )
        self.transmit()

    def quic_event_received(self, event: QuicEvent) -> None:
        self._feature_events(event)
        if isinstance(event, HandshakeCompleted):
            LOG.info(
                "handshake completed: alpn=%s resumed=%s early_data=%s",
                event.alpn_protocol,
                event.session_resumed,
                event.early_data_accepted,
            )
        elif isinstance(event, StreamDataReceived):
            req = self.requests.get(event.stream_id)
            if req is None:
                LOG.warning("data on unexpected stream %d", event.stream_id)
            elif req.status == "PENDING":
                if event.data:
                    req.fh.write(event.data)
                    req.sha.update(event.data)
                    req.received += len(event.data)
                if event.end_stream:
                    LOG.debug("stream %d: FIN after %d bytes", event.stream_id, req.received)
                    req.finish("OK")
        elif isinstance(event, StreamReset):
            req = self.requests.get(event.stream_id)
            if req is not None:
                LOG.info("stream %d (%s) reset by peer, code %d", event.stream_id, req.path, event.error_code)
                req.finish("RESET", str(event.error_code))
        elif isinstance(event, ConnectionTerminated):
            self.terminated = (
                f"connection closed by peer: error_code={event.error_code} "
                f"frame_type={event.frame_type} reason={event.reason_phrase!r}"
            )
            LOG.info("%s", self.terminated)
            for req in self.requests.values():
                req.finish("ERROR", "connection-terminated")
        if not isinstance(event, StreamDataReceived):
            # the base class would wrap streams in asyncio reader/writer
            # pairs; all stream data is handled above instead
            super().quic_event_received(event)


def address_text(addr) -> str:
    """``IP:PORT`` of a socket address, IPv4-mapped IPv6 written as IPv4."""
    host = str(addr[0]).removeprefix("::ffff:")
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


def safe_output_path(output_dir: str, url_path: str) -> str:
    parts = [p for p in url_path.split("?")[0].split("/") if p not in ("", ".", "..")]
    if not parts:
        parts = ["index.html"]
    return os.path.join(output_dir, *parts)


def parse_targets(args: argparse.Namespace) -> tuple[str, int, list[str]]:
    host, port = args.host, args.port
    paths: list[str] = []
    for item in args.requests:
        if "://" in item:
            u = urlsplit(item)
            if u.scheme != "https":
                raise SystemExit(f"unsupported URL scheme: {item}")
            uhost = u.hostname
            uport = u.port or 443
            if host is None:
                host = uhost
            if port is None:
                port = uport
            if (uhost, uport) != (host, port) and (args.host is None and args.port is None):
                raise SystemExit(f"all URLs must use one host:port (got {item})")
            # keep the path exactly as written, including any ".." segments
            rest = item.split("://", 1)[1]
            slash = rest.find("/")
            path = rest[slash:] if slash >= 0 else "/"
        else:
            path = item if item.startswith("/") else "/" + item
        paths.append(path)
    if host is None or port is None:
        raise SystemExit("--host and --port are required when no full URL is given")
    return host, port, paths


async def run(
    args: argparse.Namespace, host: str, port: int, requests: list[Request], index: int = 0, tickets: TicketStore | None = None
) -> int:
    """One connection fetching ``requests``: 0 all OK, 1 some stream failed, 2 connection failed.
    With ``tickets`` (``--resume``), it offers the ticket of the connection before it and keeps
    the ones it receives."""
    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN])
    early = False
    if tickets is not None and tickets.ticket is not None:
        config.session_ticket = tickets.ticket
        early = args.zero_rtt
    config.idle_timeout = args.idle_timeout
    if args.insecure:
        config.verify_mode = ssl.CERT_NONE
    if args.ca_file:
        config.load_verify_locations(args.ca_file)
    if args.server_name:
        config.server_name = args.server_name
    if args.qlog:
        os.makedirs(args.qlog, exist_ok=True)
        config.quic_logger = QuicFileLogger(args.qlog)
    if args.secrets_log:
        config.secrets_log_file = open(args.secrets_log, "a")

    started = time.monotonic()
    async with connect(
        host,
        port,
        configuration=config,
        create_protocol=HqClientProtocol,
        session_ticket_handler=tickets.save if tickets is not None else None,
        wait_connected=not early,
    ) as client:
        LOG.info("connected to %s:%d in %.3fs", host, port, time.monotonic() - started)
        prefix = f"CONN {index} " if args.connections > 1 else ""
        if args.key_update_every is not None:
            client.key_updater = KeyUpdater(client._quic, args.key_update_every)
        if args.migrate_after is not None:
            client.migrate_after = args.migrate_after
            client.migrate_to = args.migrate_to
        if args.max_rate:
            client.pace(args.max_rate)
        if args.keep_alive:
            client.keep_alive(args.keep_alive)
        for req in requests:
            client.fetch(req)
        await asyncio.gather(*(r.done for r in requests))
        LOG.info("all %d streams finished in %.3fs", len(requests), time.monotonic() - started)
        while early and not client.session and client.terminated is None:
            # 0-RTT answers can all arrive before the handshake ends; report after it
            await asyncio.sleep(0.01)
        report_features(args, client, prefix, tickets)
    return 0 if all(r.status == "OK" for r in requests) else 1


def report_features(args: argparse.Namespace, client: HqClientProtocol, prefix: str, tickets: TicketStore | None) -> None:
    """The lines of the feature cases (see the module docstring), printed at once (stdout is
    shared by concurrent connections)."""
    lines = []
    if client.key_updater is not None:
        u = client.key_updater
        lines.append(f"KEY_UPDATES initiated={u.initiated} completed={u.completed} remote={u.remote}")
    if tickets is not None:
        resumed, early = client.session.get("resumed"), client.session.get("early_data")
        lines.append(f"SESSION resumed={resumed} early_data={early} tickets={tickets.received}")
    if args.migrate_after is not None:
        if client.migration is not None and client.migration.done() and client.migration.exception() is None:
            local = client.migration.result()
            after = client.received_total - client.received_before_migration
            lines.append(f"MIGRATED local={local[0]}:{local[1]} bytes_before={client.received_before_migration} bytes_after={after}")
        else:
            lines.append("MIGRATED none")
    if args.report_paths:
        peer = client._quic.get_peer_address()
        sources = " ".join(f"from_{a}={n}" for a, n in sorted(client.bytes_from.items()))
        sources += "".join(f" offpath_from_{a}={n}" for a, n in sorted(client.offpath_from.items()))
        lines.append(f"PATHS peer={address_text(peer) if peer else 'none'} {sources}")
    for line in lines:
        print(prefix + line, flush=True)


async def run_one(
    args: argparse.Namespace,
    host: str,
    port: int,
    requests: list[Request],
    delay: float,
    index: int = 0,
    tickets: TicketStore | None = None,
) -> int:
    """``run`` after ``delay`` seconds, with every failure turned into an exit code and result lines."""
    await asyncio.sleep(delay)
    try:
        return await run(args, host, port, requests, index, tickets)
    except ConnectionError as exc:
        print(f"hq_client: connection failed: {exc!r}", file=sys.stderr)
        reason = "connection-failed"
    except Exception as exc:  # report, never hang
        print(f"hq_client: error: {exc!r}", file=sys.stderr)
        reason = type(exc).__name__
    for r in requests:
        r.finish("ERROR", reason)
    return 2


async def run_all(args: argparse.Namespace, host: str, port: int, batches: list[list[Request]]) -> int:
    if args.resume:
        # one after another: each connection resumes with the ticket of the one before
        tickets = TicketStore()
        worst = 0
        for i, batch in enumerate(batches):
            worst = max(worst, await run_one(args, host, port, batch, args.interval if i else 0.0, i, tickets))
        return worst
    codes = await asyncio.gather(
        *(run_one(args, host, port, batch, i * args.interval, i) for i, batch in enumerate(batches))
    )
    return max(codes)


def main() -> int:
    parser = argparse.ArgumentParser(description="aioquic hq-interop client")
    parser.add_argument("requests", nargs="+", metavar="URL_PATH", help="/path or https://host:port/path")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--output", required=True, help="directory to write fetched files into")
    parser.add_argument("--insecure", action="store_true", help="skip certificate chain/name verification")
    parser.add_argument("--ca-file", default=None, help="PEM file of trusted CA certificates")
    parser.add_argument("--server-name", default=None, help="TLS server name (SNI / verification)")
    parser.add_argument("--timeout", type=float, default=60.0, help="overall time limit in seconds")
    parser.add_argument("--idle-timeout", type=float, default=30.0, help="QUIC idle timeout in seconds")
    parser.add_argument("--max-rate", type=float, default=None, metavar="BYTES_PER_SEC",
                        help="hold the receive rate to this many bytes per second (flow control)")
    parser.add_argument("--keep-alive", type=float, default=None, metavar="SECONDS",
                        help="send a PING after SECONDS without receiving anything")
    parser.add_argument("--connections", type=int, default=1, metavar="N",
                        help="fetch the requests over N separate connections")
    parser.add_argument("--interval", type=float, default=0.0, metavar="SECONDS",
                        help="with --connections: start one connection every SECONDS")
    parser.add_argument("--key-update-every", type=int, default=None, metavar="PACKETS",
                        help="initiate a key update every PACKETS packets (sent plus received)")
    parser.add_argument("--resume", action="store_true",
                        help="with --connections: sequential connections, each resuming the previous session")
    parser.add_argument("--zero-rtt", action="store_true",
                        help="with --resume: send the requests of resumed connections as 0-RTT data")
    parser.add_argument("--migrate-after", type=int, default=None, metavar="BYTES",
                        help="move to a new local address and connection ID after BYTES were received")
    parser.add_argument("--migrate-to", default="127.0.0.2", metavar="HOST",
                        help="with --migrate-after: the new local IPv4 address")
    parser.add_argument("--report-paths", action="store_true",
                        help="print the server address the connection ended on and the bytes from each")
    parser.add_argument("--qlog", default=None, help="directory for qlog traces")
    parser.add_argument("--secrets-log", default=None, help="file for TLS secrets (NSS key log)")
    parser.add_argument("-v", "--verbose", action="store_true", help="aioquic DEBUG logging on stderr")
    args = parser.parse_args()

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        level=logging.DEBUG if args.verbose else logging.WARNING,
        stream=sys.stderr,
    )

    host, port, paths = parse_targets(args)
    if args.connections < 1:
        raise SystemExit("--connections must be at least 1")
    output_dir = os.path.abspath(args.output)
    os.makedirs(output_dir, exist_ok=True)
    many = args.connections > 1
    batches = [
        [
            Request(path=p, out_path=safe_output_path(os.path.join(output_dir, f"conn-{i}") if many else output_dir, p))
            for p in paths
        ]
        for i in range(args.connections)
    ]

    code = 2
    try:
        code = asyncio.run(asyncio.wait_for(run_all(args, host, port, batches), timeout=args.timeout))
    except asyncio.TimeoutError:
        print(f"hq_client: timed out after {args.timeout}s", file=sys.stderr)
        for batch in batches:
            for r in batch:
                r.finish("ERROR", "timeout")
    except Exception as exc:  # report, never hang
        print(f"hq_client: error: {exc!r}", file=sys.stderr)
        for batch in batches:
            for r in batch:
                r.finish("ERROR", type(exc).__name__)
    ok = 0
    total = 0
    for i, batch in enumerate(batches):
        for r in batch:
            if r.status == "PENDING":
                r.finish("ERROR", "not-completed")
            print(f"CONN {i} {r.result_line()}" if many else r.result_line())
            ok += r.status == "OK"
            total += 1
    print(f"SUMMARY ok={ok} failed={total - ok}")
    sys.stdout.flush()
    requests = [r for batch in batches for r in batch]
    if code == 0 and ok != total:
        code = 1
    if code != 2 and any(r.detail in ("timeout", "connection-failed", "connection-terminated") for r in requests):
        code = 2
    return code


if __name__ == "__main__":
    sys.exit(main())
