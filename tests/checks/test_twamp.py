"""TWAMP-light test packets, byte by byte against RFC 5357's figures (sections 4.1.2, 4.2.1).

The expected bytes are written out by hand from the RFC's packet diagrams: every field gets a
distinct value so that a field written at the wrong offset, width or byte order shows up.
"""

from __future__ import annotations

import pytest

from checks import twamp

# Section 4.1.2, unauthenticated Session-Sender test packet:
#   Sequence Number (4) | Timestamp (8) | Error Estimate (2) | Packet Padding
SENDER_BYTES = bytes(
    [
        0x01, 0x02, 0x03, 0x04,                          # Sequence Number
        0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18,  # Timestamp: seconds, fraction
        0x81, 0x23,                                      # Error Estimate: S=1 Z=0 Scale=1 M=0x23
        0xA1, 0xA2, 0xA3,                                # Packet Padding
    ]
)  # fmt: skip

# Section 4.2.1, unauthenticated Session-Reflector test packet:
#   Sequence Number (4) | Timestamp (8) | Error Estimate (2) | MBZ (2) | Receive Timestamp (8)
#   | Sender Sequence Number (4) | Sender Timestamp (8) | Sender Error Estimate (2) | MBZ (2)
#   | Sender TTL (1) | Packet Padding
REFLECTOR_BYTES = bytes(
    [
        0x0A, 0x0B, 0x0C, 0x0D,                          # Sequence Number
        0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28,  # Timestamp
        0x00, 0x01,                                      # Error Estimate: S=0 Scale=0 Mult=1
        0x00, 0x00,                                      # MBZ
        0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38,  # Receive Timestamp
        0x41, 0x42, 0x43, 0x44,                          # Sender Sequence Number
        0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58,  # Sender Timestamp
        0x80, 0x01,                                      # Sender Error Estimate: S=1 Mult=1
        0x00, 0x00,                                      # MBZ
        0xFF,                                            # Sender TTL
        0xB1, 0xB2,                                      # Packet Padding
    ]
)  # fmt: skip


def test_sender_packet_layout() -> None:
    packet = twamp.SenderPacket(0x01020304, 0x1112131415161718, 0x8123, b"\xa1\xa2\xa3")
    assert packet.encode() == SENDER_BYTES
    assert twamp.SenderPacket.decode(SENDER_BYTES) == packet
    assert twamp.SENDER_HEADER == 14


def test_reflector_packet_layout() -> None:
    packet = twamp.ReflectorPacket(
        seq=0x0A0B0C0D,
        timestamp=0x2122232425262728,
        error_estimate=0x0001,
        receive_timestamp=0x3132333435363738,
        sender_seq=0x41424344,
        sender_timestamp=0x5152535455565758,
        sender_error_estimate=0x8001,
        sender_ttl=255,
        padding=b"\xb1\xb2",
    )
    assert packet.encode() == REFLECTOR_BYTES
    assert twamp.ReflectorPacket.decode(REFLECTOR_BYTES) == packet
    assert twamp.REFLECTOR_HEADER == 41


def test_decoding_ignores_what_must_be_zero() -> None:
    # RFC 5357: MBZ fields are set to zero by the sender and ignored by the receiver.
    dirty = bytearray(REFLECTOR_BYTES)
    dirty[14:16] = b"\xff\xff"
    dirty[38:40] = b"\xff\xff"
    assert twamp.ReflectorPacket.decode(bytes(dirty)).sender_ttl == 255


def test_short_packets_are_refused() -> None:
    with pytest.raises(twamp.PacketError, match="13 octets"):
        twamp.SenderPacket.decode(SENDER_BYTES[:13])
    with pytest.raises(twamp.PacketError, match="40 octets"):
        twamp.ReflectorPacket.decode(REFLECTOR_BYTES[:40])


def test_reflect_answers_with_a_reply_exactly_as_long() -> None:
    # A 60-octet request: 14 header + 46 padding; the reply has 41 header + 19 padding, the
    # last 19 octets of the request's padding (the first 27 make room for the larger header).
    padding = bytes(range(100, 146))
    request = twamp.SenderPacket(7, 0x0102030405060708, 0x8001, padding).encode()
    assert len(request) == 60
    reply = twamp.reflect(
        request,
        receive_timestamp=0xAAAAAAAABBBBBBBB,
        send_timestamp=0xCCCCCCCCDDDDDDDD,
        error_estimate=0x0002,
        ttl=61,
    )
    assert len(reply) == len(request)
    expected = (
        bytes([0, 0, 0, 7])  # stateless: the sender's sequence number
        + bytes([0xCC] * 4 + [0xDD] * 4)
        + bytes([0x00, 0x02, 0x00, 0x00])
        + bytes([0xAA] * 4 + [0xBB] * 4)
        + bytes([0, 0, 0, 7])
        + bytes([1, 2, 3, 4, 5, 6, 7, 8])
        + bytes([0x80, 0x01, 0x00, 0x00])
        + bytes([61])
        + bytes(range(127, 146))
    )
    assert reply == expected
    with_seq = twamp.ReflectorPacket.decode(twamp.reflect(request, 1, 2, 3, 64, seq=99))
    assert (with_seq.seq, with_seq.sender_seq) == (99, 7)


def test_reflect_never_amplifies() -> None:
    short = twamp.SenderPacket(1, 2, 3, bytes(26)).encode()  # 40 octets
    with pytest.raises(twamp.PacketError, match="amplify"):
        twamp.reflect(short, 1, 2, 3, 64)
    minimal = twamp.SenderPacket(1, 2, 3, bytes(27)).encode()
    assert len(twamp.reflect(minimal, 1, 2, 3, 64)) == 41


def test_ntp_timestamps() -> None:
    # The Unix epoch is 2,208,988,800 s after the NTP epoch (RFC 5905): 0x83AA7E80.
    assert twamp.ntp_from_ns(0) == 0x83AA7E80_00000000
    # Half a second is half of the 32-bit fraction.
    assert twamp.ntp_from_ns(500_000_000) == 0x83AA7E80_80000000
    # 2024-01-01T00:00:00Z is Unix 1,704,067,200 s, NTP 3,913,056,000 s = 0xE93C7F00.
    assert twamp.ntp_from_ns(1_704_067_200_250_000_000) == 0xE93C7F00_40000000
    assert twamp.ns_from_ntp(0xE93C7F00_40000000) == 1_704_067_200_250_000_000
    # A fraction unit is 2^-32 s (0.23 ns): round trips are exact to the nanosecond.
    for ns in (1_795_000_000_123_456_789, 1_700_000_000_000_000_001):
        assert twamp.ns_from_ntp(twamp.ntp_from_ns(ns)) == ns


def test_error_estimate() -> None:
    # RFC 4656 4.1.2: error = Multiplier * 2^(Scale - 32) s. 1 ms = 2^32/1000 units
    # = 4,294,967; halving 15 times gives 131.07: Scale 15 (0x0F), Multiplier 131 (0x83).
    estimate = twamp.error_estimate(True, 0.001)
    assert estimate == 0x8F83
    assert twamp.is_synchronized(estimate)
    assert twamp.error_seconds(estimate) == pytest.approx(131 / 2**17)
    unsynced = twamp.error_estimate(False, 1.0)
    assert not twamp.is_synchronized(unsynced)
    assert unsynced & 0x4000 == 0  # Z: NTP format
    assert unsynced & 0xFF != 0  # a zero multiplier is forbidden
    assert twamp.error_seconds(unsynced) == pytest.approx(1.0, rel=0.01)
    assert twamp.error_estimate(True, 0.0) & 0xFF == 1


def test_clock_state_reads_the_kernel() -> None:
    synced, error = twamp.clock_state()
    assert synced in (True, False)  # Linux answers adjtimex
    assert 0 < error <= 1.0
