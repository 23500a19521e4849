#!/usr/bin/env python3
"""hq-interop server built on aioquic, for interoperability tests of ant-quic.

hq-interop is HTTP/0.9 over QUIC as used by the QUIC interop runner: ALPN
"hq-interop"; the client opens one bidirectional stream per file and sends
``GET /path\\r\\n`` followed by FIN; the server answers with the file's bytes
followed by FIN.

Usage::

    python hq_server.py --host 127.0.0.1 --port 0 --root DIR \\
        [--cert C --key K] [--max-seconds N] [--retry] [-v]

Without ``--cert``/``--key`` a self-signed ECDSA P-256 certificate (SAN:
localhost, 127.0.0.1, ::1) is generated with the ``cryptography`` package into
a temporary directory that is removed on exit.

Once the UDP socket is bound the server prints exactly one line
``READY <port>`` to stdout (flushed); with ``--port 0`` that is the port the
kernel chose. It runs until SIGTERM/SIGINT, or until ``--max-seconds`` have
passed (default: no limit), then exits 0.

Files are served from under ``--root`` only. The request path is
percent-decoded; a path with a ``..`` component, or one whose resolved real
path (symlinks followed) lies outside the root, is refused. Refusals are
signalled by RESETTING the response stream (RESET_STREAM) with these
application error codes, and no data is sent:

* 0x1  not found (missing file, or not a regular file)
* 0x2  forbidden (path traversal / outside the root)
* 0x3  bad request (not ``GET /...``, request line over 8 KiB, or no request
  line before FIN)

Each request is logged on stderr as ``<status> <path> <bytes>``.

Features (tests/interop_features.rs; helpers in features.py), each reported on stdout:

* ``--key-update-every N``: initiate a 1-RTT key update every N packets (sent plus received),
  each after the previous one completed; prints ``KEY_UPDATES initiated=I completed=C
  remote=R`` when a connection ends (R: updates the client initiated). N = 0 only counts.
* ``--session-tickets``: issue session tickets (kept in memory) and accept resumption and 0-RTT
  with them; prints ``SESSION resumed=<bool> early_data=<bool>`` for every handshake.
  ``--forget-tickets`` issues them but never takes one back (as a restarted server): a client
  offering one gets a full handshake and its 0-RTT data refused.

* ``--preferred-host HOST``: offer HOST, on the server's port, as the preferred address
  (RFC 9000 section 9.6), listen there too, and send each connection's datagrams from the
  address its client last sent to; prints ``PREFERRED datagrams=N of=M`` when a connection ends
  (N of the M datagrams from its client came to the preferred address).

``-v`` turns on aioquic's DEBUG logging on stderr; ``--qlog DIR`` writes qlog
traces, ``--secrets-log FILE`` TLS keys (NSS key log format).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import logging
import os
import shutil
import signal
import sys
import tempfile
from urllib.parse import unquote

from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
)
from aioquic.quic.logger import QuicFileLogger

from features import KeyUpdater, PreferredAddressSocket, offer_preferred_address

ALPN = "hq-interop"
ERR_NOT_FOUND = 0x1
ERR_FORBIDDEN = 0x2
ERR_BAD_REQUEST = 0x3
MAX_REQUEST = 8192
CHUNK = 64 * 1024
LOG = logging.getLogger("hq_server")


def log_request(status: str, path: str, size: int) -> None:
    print(f"{status} {path} {size}", file=sys.stderr, flush=True)


def resolve(root: str, raw_path: str) -> tuple[str | None, int]:
    """Map a request path to a file under root: (file, 0) or (None, error code)."""
    path = unquote(raw_path.split("?", 1)[0])
    if not path.startswith("/"):
        return None, ERR_BAD_REQUEST
    parts = path.split("/")
    if ".." in parts or "\x00" in path:
        return None, ERR_FORBIDDEN
    candidate = os.path.realpath(os.path.join(root, *[p for p in parts if p]))
    if candidate != root and not candidate.startswith(root + os.sep):
        return None, ERR_FORBIDDEN
    if not os.path.isfile(candidate):
        return None, ERR_NOT_FOUND
    return candidate, 0


class HqServerProtocol(QuicConnectionProtocol):
    root: str = "."
    # features.py: --key-update-every, --session-tickets
    key_update_every: int | None = None
    report_sessions: bool = False
    preferred_address: tuple[str, int] | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._buffers: dict[int, bytearray] = {}
        self._answered: set[int] = set()
        self._key_updater = KeyUpdater(self._quic, self.key_update_every) if self.key_update_every is not None else None
        self.datagrams = 0
        self.preferred_datagrams = 0
        if self.preferred_address is not None:
            offer_preferred_address(self._quic, self.preferred_address)

    def datagram_received(self, data, addr) -> None:
        self.datagrams += 1
        super().datagram_received(data, addr)

    def _feature_events(self, event: QuicEvent) -> None:
        if self._key_updater is not None:
            self._key_updater.poll()
            if isinstance(event, ConnectionTerminated):
                u = self._key_updater
                print(f"KEY_UPDATES initiated={u.initiated} completed={u.completed} remote={u.remote}", flush=True)
        if self.preferred_address is not None and isinstance(event, ConnectionTerminated):
            print(f"PREFERRED datagrams={self.preferred_datagrams} of={self.datagrams}", flush=True)
        if self.report_sessions and isinstance(event, HandshakeCompleted):
            print(f"SESSION resumed={event.session_resumed} early_data={event.early_data_accepted}", flush=True)

    def _reset(self, sid: int, code: int, path: str) -> None:
        self._answered.add(sid)
        self._buffers.pop(sid, None)
        self._quic.reset_stream(sid, code)
        self.transmit()
        log_request({ERR_NOT_FOUND: "404", ERR_FORBIDDEN: "403"}.get(code, "400"), path, 0)

    def _answer(self, sid: int, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").strip()
        if not text.startswith("GET "):
            self._reset(sid, ERR_BAD_REQUEST, repr(text[:80]))
            return
        raw_path = text[4:].strip()
        filename, err = resolve(self.root, raw_path)
        if filename is None:
            self._reset(sid, err, raw_path)
            return
        self._answered.add(sid)
        self._buffers.pop(sid, None)
        size = 0
        # aioquic buffers stream data itself and releases it as flow control
        # allows; test files are small enough to be queued in one go.
        with open(filename, "rb") as fh:
            while True:
                chunk = fh.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                self._quic.send_stream_data(sid, chunk, end_stream=False)
        self._quic.send_stream_data(sid, b"", end_stream=True)
        self.transmit()
        log_request("200", raw_path, size)

    def quic_event_received(self, event: QuicEvent) -> None:
        self._feature_events(event)
        if isinstance(event, HandshakeCompleted):
            LOG.info("handshake completed: alpn=%s", event.alpn_protocol)
        elif isinstance(event, StreamDataReceived):
            sid = event.stream_id
            if sid in self._answered:
                pass
            elif sid % 4 != 0:
                # only client-initiated bidirectional streams carry requests
                LOG.warning("ignoring data on stream %d", sid)
            else:
                buf = self._buffers.setdefault(sid, bytearray())
                buf += event.data
                nl = buf.find(b"\n")
                if nl >= 0:
                    self._answer(sid, bytes(buf[:nl]))
                elif len(buf) > MAX_REQUEST:
                    self._reset(sid, ERR_BAD_REQUEST, "<request line too long>")
                elif event.end_stream:
                    # tolerate a request without the trailing CRLF
                    if buf:
                        self._answer(sid, bytes(buf))
                    else:
                        self._reset(sid, ERR_BAD_REQUEST, "<empty request>")
        elif isinstance(event, StreamReset):
            LOG.info("stream %d reset by client, code %d", event.stream_id, event.error_code)
            self._buffers.pop(event.stream_id, None)
        elif isinstance(event, ConnectionTerminated):
            LOG.info(
                "connection terminated: code=%d frame=%s reason=%r",
                event.error_code,
                event.frame_type,
                event.reason_phrase,
            )
        if not isinstance(event, StreamDataReceived):
            # the base class would wrap streams in asyncio reader/writer
            # pairs; all stream data is handled above instead
            super().quic_event_received(event)


def generate_certificate(directory: str) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


async def run(args: argparse.Namespace, cert: str, key: str) -> None:
    config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    config.load_cert_chain(cert, key)
    config.idle_timeout = args.idle_timeout
    if args.qlog:
        os.makedirs(args.qlog, exist_ok=True)
        config.quic_logger = QuicFileLogger(args.qlog)
    if args.secrets_log:
        config.secrets_log_file = open(args.secrets_log, "a")

    HqServerProtocol.root = os.path.realpath(args.root)
    HqServerProtocol.key_update_every = args.key_update_every
    HqServerProtocol.report_sessions = args.session_tickets
    tickets: dict[bytes, object] = {}
    loop = asyncio.get_running_loop()
    server = await serve(
        args.host,
        args.port,
        configuration=config,
        create_protocol=HqServerProtocol,
        retry=args.retry,
        session_ticket_fetcher=(lambda t: None if args.forget_tickets else tickets.pop(t, None))
        if args.session_tickets
        else None,
        session_ticket_handler=(lambda t: tickets.__setitem__(t.ticket, t)) if args.session_tickets else None,
    )
    sockname = server._transport.get_extra_info("sockname")
    if args.preferred_host:
        HqServerProtocol.preferred_address = (args.preferred_host, sockname[1])
        await loop.create_datagram_endpoint(
            lambda: PreferredAddressSocket(server), local_addr=(args.preferred_host, sockname[1])
        )
    print(f"READY {sockname[1]}", flush=True)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if args.max_seconds is not None:
            await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
        else:
            await stop.wait()
    except asyncio.TimeoutError:
        LOG.info("max-seconds reached")
    server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="aioquic hq-interop server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4433)
    parser.add_argument("--root", required=True, help="directory to serve files from")
    parser.add_argument("--cert", default=None, help="PEM certificate chain")
    parser.add_argument("--key", default=None, help="PEM private key")
    parser.add_argument("--max-seconds", type=float, default=None, help="exit after this long")
    parser.add_argument("--idle-timeout", type=float, default=30.0)
    parser.add_argument("--retry", action="store_true", help="send a Retry before each handshake")
    parser.add_argument("--key-update-every", type=int, default=None, metavar="PACKETS",
                        help="initiate a key update every PACKETS packets (sent plus received)")
    parser.add_argument("--session-tickets", action="store_true",
                        help="issue session tickets; accept resumption and 0-RTT; report each handshake")
    parser.add_argument("--forget-tickets", action="store_true",
                        help="with --session-tickets: never resume (as a restarted server would)")
    parser.add_argument("--preferred-host", default=None, metavar="HOST",
                        help="offer HOST (IPv4), on the server's port, as the preferred address")
    parser.add_argument("--qlog", default=None, help="directory for qlog traces")
    parser.add_argument("--secrets-log", default=None, help="file for TLS secrets (NSS key log)")
    parser.add_argument("-v", "--verbose", action="store_true", help="aioquic DEBUG logging on stderr")
    args = parser.parse_args()

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        level=logging.DEBUG if args.verbose else logging.WARNING,
        stream=sys.stderr,
    )
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    if not os.path.isdir(args.root):
        parser.error(f"--root {args.root!r} is not a directory")

    tmpdir = None
    try:
        if args.cert is None:
            tmpdir = tempfile.mkdtemp(prefix="hq_server_cert_")
            cert, key = generate_certificate(tmpdir)
        else:
            cert, key = args.cert, args.key
        asyncio.run(run(args, cert, key))
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
