"""The frames exchanged with the broker plugin (plugin/cvm_iot_bridge.c) over a Unix socket.

A frame is a u32 big-endian length of what follows, a u8 type, then fields: each a u32
big-endian length and that many bytes. Integers travel as 8-byte big-endian fields.
"""

import struct

HELLO = 1
CONNECT = 2
ACL = 3
MESSAGE = 4
DISCONNECT = 5
VERDICT = 0x80
DELIVER = 0x81
KICK = 0x82

PROTOCOL_VERSION = b"1"
MAX_FRAME_LEN = 1024 * 1024

# Mosquitto's access values in MOSQ_EVT_ACL_CHECK.
ACCESS_READ = 0x01
ACCESS_WRITE = 0x02
ACCESS_SUBSCRIBE = 0x04
ACCESS_UNSUBSCRIBE = 0x08


class FrameError(ValueError):
    """The peer sent something that is not a frame of this protocol."""


def u64(value):
    return struct.pack(">Q", value)


def as_u64(field):
    if len(field) != 8:
        raise FrameError("an integer field must be 8 bytes")
    return struct.unpack(">Q", field)[0]


def encode(frame_type, *fields):
    body = bytearray([frame_type])
    for field in fields:
        if isinstance(field, str):
            field = field.encode("utf-8")
        body += struct.pack(">I", len(field)) + field
    if len(body) > MAX_FRAME_LEN:
        raise FrameError("frame too large")
    return struct.pack(">I", len(body)) + bytes(body)


def decode_fields(body):
    fields = []
    offset = 0
    while offset < len(body):
        if len(body) - offset < 4:
            raise FrameError("truncated field length")
        (length,) = struct.unpack_from(">I", body, offset)
        offset += 4
        if length > len(body) - offset:
            raise FrameError("field longer than the frame")
        fields.append(bytes(body[offset:offset + length]))
        offset += length
    return fields


class FrameReader:
    """Reassembles frames from a byte stream."""

    def __init__(self):
        self._buffer = bytearray()

    def feed(self, data):
        """Adds bytes and returns every complete frame as (type, fields)."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= 4:
            (length,) = struct.unpack_from(">I", self._buffer, 0)
            if length == 0 or length > MAX_FRAME_LEN:
                raise FrameError(f"bad frame length {length}")
            if len(self._buffer) < 4 + length:
                break
            body = bytes(self._buffer[4:4 + length])
            del self._buffer[:4 + length]
            frames.append((body[0], decode_fields(body[1:])))
        return frames
