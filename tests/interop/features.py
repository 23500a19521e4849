"""QUIC features exercised by the interop cases in tests/interop_features.rs, shared by
hq_client.py and hq_server.py: key updates forced every N packets, session tickets kept in
memory for resumption and 0-RTT, active migration of a client to a new local address, and a
server's preferred address (RFC 9000 section 9.6), which aioquic's server cannot offer by itself."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection, QuicConnectionId
from aioquic.quic.packet import (
    QuicPreferredAddress,
    pull_quic_header,
    pull_quic_transport_parameters,
    push_quic_transport_parameters,
)

LOG = logging.getLogger("features")


class KeyUpdater:
    """Forces a 1-RTT key update every ``every`` packets (sent plus received) on one connection.

    An update is counted as initiated when this side asks for it (``request_key_update``) and as
    completed once a packet from the peer decrypts with the new keys (so the peer followed). The
    next update is only asked for after the previous one completed (RFC 9001 section 6.1).
    With ``every`` 0 it initiates none. Either way it counts the updates the peer initiated
    (``remote``): a packet in the other key phase that this side did not ask for."""

    def __init__(self, quic: QuicConnection, every: int) -> None:
        self._quic = quic
        self._every = every
        self._packets = 0
        self._waiting_phase: int | None = None
        self._wrapped = False
        self._recv_phase = 0
        self.initiated = 0
        self.completed = 0
        self.remote = 0

    def poll(self) -> None:
        """Install the packet counters once 1-RTT keys exist (call after every event)."""
        if self._wrapped:
            return
        pair = self._quic._cryptos.get(tls.Epoch.ONE_RTT)
        if pair is None or not pair.send.is_valid():
            return
        self._wrapped = True
        decrypt, encrypt = pair.decrypt_packet, pair.encrypt_packet

        def counted_decrypt(packet: bytes, encrypted_offset: int, expected_packet_number: int):
            result = decrypt(packet, encrypted_offset, expected_packet_number)
            phase = (result[0][0] & 0x04) >> 2
            if self._waiting_phase is not None and phase == self._waiting_phase:
                self.completed += 1
                self._waiting_phase = None
                LOG.info("key update %d completed: the peer sends in key phase %d", self.completed, phase)
            elif phase != self._recv_phase:
                self.remote += 1
                LOG.info("key update %d initiated by the peer: key phase %d", self.remote, phase)
            self._recv_phase = phase
            self._count()
            return result

        def counted_encrypt(plain_header: bytes, plain_payload: bytes, packet_number: int) -> bytes:
            out = encrypt(plain_header, plain_payload, packet_number)
            self._count()
            return out

        pair.decrypt_packet = counted_decrypt
        pair.encrypt_packet = counted_encrypt

    def _count(self) -> None:
        self._packets += 1
        if not self._every or self._packets % self._every != 0 or self._waiting_phase is not None:
            return
        pair = self._quic._cryptos[tls.Epoch.ONE_RTT]
        self._quic.request_key_update()
        self.initiated += 1
        self._waiting_phase = pair.key_phase
        LOG.info("key update %d requested after %d packets: key phase %d", self.initiated, self._packets, pair.key_phase)


class TicketStore:
    """The latest session ticket a server gave, for the next connection to resume with."""

    def __init__(self) -> None:
        self.ticket: tls.SessionTicket | None = None
        self.received = 0

    def save(self, ticket: tls.SessionTicket) -> None:
        self.ticket = ticket
        self.received += 1
        LOG.info("session ticket received (max_early_data=%s)", ticket.max_early_data_size)


def migrate(protocol, loop: asyncio.AbstractEventLoop, local_host: str) -> asyncio.Future:
    """Move a client connection to a new UDP socket bound to ``local_host`` (a new local address
    and port) with a new connection ID, and send a PING from there so the server sees the new
    path at once (RFC 9000 section 9.2). Resolves to the new local address."""

    async def move():
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::ffff:" + local_host, 0, 0, 0))
        old = protocol._transport
        # The new endpoint's connection_made hands the protocol its new transport.
        await loop.create_datagram_endpoint(lambda: protocol, sock=sock)
        # Nothing arrives for the connection on the old socket any more: close it without
        # telling the protocol (connection_lost would end the connection).
        old.set_protocol(asyncio.DatagramProtocol())
        old.close()
        protocol._quic.change_connection_id()
        protocol._quic.send_ping(0x6D6967)
        protocol.transmit()
        return sock.getsockname()

    return asyncio.ensure_future(move())


def offer_preferred_address(quic: QuicConnection, address: tuple[str, int]) -> None:
    """Make a server connection offer ``address`` (IPv4) in the ``preferred_address`` transport
    parameter, with a connection ID of its own (the next sequence number, normally 1) that the
    server routes like the others. aioquic 1.7.2 has no setting for it: the transport parameters
    it serializes are read back, completed and written again."""
    cid = QuicConnectionId(
        cid=os.urandom(quic._configuration.connection_id_length),
        sequence_number=quic._host_cid_seq,
        stateless_reset_token=os.urandom(16),
        was_sent=True,  # sent in the transport parameters, not in NEW_CONNECTION_ID
    )
    quic._host_cids.append(cid)
    quic._host_cid_seq += 1
    # The server's CID table learns it from this event, as from a NEW_CONNECTION_ID.
    quic._events.append(events.ConnectionIdIssued(connection_id=cid.cid))
    serialize = quic._serialize_transport_parameters

    def with_preferred_address() -> bytes:
        params = pull_quic_transport_parameters(Buffer(data=serialize()))
        params.preferred_address = QuicPreferredAddress(
            ipv4_address=address,
            ipv6_address=None,
            connection_id=cid.cid,
            stateless_reset_token=cid.stateless_reset_token,
        )
        buf = Buffer(capacity=3 * quic._max_datagram_size)
        push_quic_transport_parameters(buf, params)
        return buf.data

    quic._serialize_transport_parameters = with_preferred_address


class PreferredAddressSocket(asyncio.DatagramProtocol):
    """The second socket of a server offering a preferred address: datagrams go to the
    connection their connection ID names (the server's table), and that connection sends from
    this socket from then on (aioquic keeps one transport per connection and no local address per
    path, so replies would otherwise leave from the first address)."""

    def __init__(self, server) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self._transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=self._server._configuration.connection_id_length)
        except ValueError:
            return
        protocol = self._server._protocols.get(header.destination_cid)
        if protocol is None:
            return
        protocol.preferred_datagrams = getattr(protocol, "preferred_datagrams", 0) + 1
        protocol._transport = self._transport
        protocol.datagram_received(data, addr)
