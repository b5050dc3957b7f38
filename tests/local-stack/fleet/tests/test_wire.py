"""The plugin frame format, MQTT topic matching and the ALPN front's ClientHello parsing."""

import logging
import os
import socket
import ssl
import sys
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
logging.disable(logging.CRITICAL)  # the stand-in logs every refusal; the assertions say what matters

from standin import alpn, wire  # noqa: E402
from standin.broker import topic_matches  # noqa: E402


class Frames(unittest.TestCase):
    def test_round_trip_in_pieces(self):
        frames = wire.encode(wire.DELIVER, wire.u64(7), "client", "a/b", b"\x00payload") + wire.encode(wire.KICK, wire.u64(9))
        reader = wire.FrameReader()
        got = []
        for i in range(len(frames)):
            got += reader.feed(frames[i:i + 1])
        self.assertEqual(got, [(wire.DELIVER, [wire.u64(7), b"client", b"a/b", b"\x00payload"]),
                               (wire.KICK, [wire.u64(9)])])
        self.assertEqual(wire.as_u64(got[0][1][0]), 7)

    def test_malformed_frames(self):
        for bad in (b"\x00\x00\x00\x00", (wire.MAX_FRAME_LEN + 1).to_bytes(4, "big"),
                    b"\x00\x00\x00\x04\x02\x00\x00\x09"):
            with self.assertRaises(wire.FrameError):
                wire.FrameReader().feed(bad)
        with self.assertRaises(wire.FrameError):
            wire.as_u64(b"\x01")


class Topics(unittest.TestCase):
    def test_matching(self):
        cases = [("a/+/c", "a/b/c", True), ("a/#", "a", True), ("a/#", "a/b/c", True), ("a/+", "a/b/c", False),
                 ("#", "$aws/x", False), ("+/x", "$aws/x", False), ("$aws/+", "$aws/x", True),
                 ("$aws/certificates/create-from-csr/json/accepted", "$aws/certificates/create-from-csr/json/accepted", True),
                 ("a/b", "a/b/c", False), ("a/b/c", "a/b", False)]
        for topic_filter, topic, expected in cases:
            self.assertEqual(topic_matches(topic_filter, topic), expected, (topic_filter, topic))


def client_hello(protocols):
    """The first bytes a real TLS client (Python's ssl) sends, with the given ALPN list."""
    context = ssl.create_default_context()
    if protocols:
        context.set_alpn_protocols(protocols)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


class Alpn(unittest.TestCase):
    def parse(self, data):
        left, right = socket.socketpair()
        threading.Thread(target=lambda: (left.sendall(data), left.close())).start()
        try:
            raw, hello = alpn.read_client_hello(right)
        finally:
            right.close()
        self.assertEqual(raw, data)
        return alpn.offered_protocols(hello)

    def test_offered_protocols(self):
        self.assertEqual(self.parse(client_hello(["x-amzn-mqtt-ca"])), [b"x-amzn-mqtt-ca"])
        self.assertEqual(self.parse(client_hello(["h2", "x-amzn-mqtt-ca"])), [b"h2", b"x-amzn-mqtt-ca"])
        self.assertEqual(self.parse(client_hello([])), [])

    def test_not_tls(self):
        with self.assertRaises(alpn.NotClientHello):
            self.parse(b"GET / HTTP/1.1\r\n\r\n")
        with self.assertRaises(alpn.NotClientHello):
            self.parse(client_hello(["x"])[:20])
        with self.assertRaises(alpn.NotClientHello):
            alpn.offered_protocols(b"\x03\x03" + b"\x00" * 10)


if __name__ == "__main__":
    unittest.main()
