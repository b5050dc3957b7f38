"""The local stand-in for AWS IoT's port 443 MQTT endpoint, which requires the TLS ALPN protocol
`x-amzn-mqtt-ca`. Mosquitto 2.0 cannot require ALPN on a listener, so this front reads each
client's TLS ClientHello, refuses a client that does not offer the protocol with the TLS alert
AWS's endpoint would send (no_application_protocol), and otherwise passes the untouched byte
stream to the broker's mutual-TLS listener: the TLS session (client certificate included) is
still between the device and Mosquitto. Difference: the ServerHello names no ALPN protocol.
"""

import logging
import socket
import struct
import threading

log = logging.getLogger("fleet.alpn")

MAX_CLIENT_HELLO = 64 * 1024
HELLO_TIMEOUT_SECONDS = 10
# TLS alert record: fatal (2), no_application_protocol (120).
NO_APPLICATION_PROTOCOL_ALERT = bytes([21, 3, 3, 0, 2, 2, 120])


class NotClientHello(ValueError):
    pass


def read_client_hello(sock):
    """Reads TLS records until the whole ClientHello handshake message is in; returns
    (raw bytes read, ClientHello body)."""
    raw = bytearray()
    handshake = bytearray()
    while True:
        header = _read_exact(sock, 5)
        raw += header
        content_type, _, length = struct.unpack(">BHH", header)
        if content_type != 22 or length == 0 or length > 16384 + 2048:
            raise NotClientHello("not a TLS handshake record")
        fragment = _read_exact(sock, length)
        raw += fragment
        handshake += fragment
        if len(handshake) >= 4:
            if handshake[0] != 1:
                raise NotClientHello("the first handshake message is not a ClientHello")
            body_length = int.from_bytes(handshake[1:4], "big")
            if body_length > MAX_CLIENT_HELLO:
                raise NotClientHello("ClientHello too large")
            if len(handshake) >= 4 + body_length:
                return bytes(raw), bytes(handshake[4:4 + body_length])
        if len(raw) > MAX_CLIENT_HELLO:
            raise NotClientHello("ClientHello too large")


def offered_protocols(client_hello):
    """The ALPN protocol names a ClientHello body offers (RFC 7301), [] without the extension."""
    view = memoryview(client_hello)
    try:
        offset = 2 + 32  # legacy_version, random
        offset += 1 + view[offset]  # session id
        offset += 2 + int.from_bytes(view[offset:offset + 2], "big")  # cipher suites
        offset += 1 + view[offset]  # compression methods
        if offset == len(view):
            return []
        end = offset + 2 + int.from_bytes(view[offset:offset + 2], "big")
        offset += 2
        while offset + 4 <= end:
            kind = int.from_bytes(view[offset:offset + 2], "big")
            length = int.from_bytes(view[offset + 2:offset + 4], "big")
            data = view[offset + 4:offset + 4 + length]
            offset += 4 + length
            if kind != 16:
                continue
            names = []
            position = 2
            while position < len(data):
                size = data[position]
                names.append(bytes(data[position + 1:position + 1 + size]))
                position += 1 + size
            return names
    except IndexError:
        raise NotClientHello("truncated ClientHello")
    return []


def _read_exact(sock, count):
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise NotClientHello("connection closed during the ClientHello")
        data += chunk
    return bytes(data)


def _pipe(source, destination):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            destination.sendall(data)
    except OSError:
        pass
    finally:
        try:
            destination.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class AlpnFront:
    def __init__(self, listen_port, backend_port, protocol=b"x-amzn-mqtt-ca"):
        self._listen_port = listen_port
        self._backend_port = backend_port
        self._protocol = protocol

    def serve(self):
        listener = socket.create_server(("127.0.0.1", self._listen_port))
        log.info("ALPN front on 127.0.0.1:%d requires %s", self._listen_port, self._protocol.decode())
        while True:
            client, _ = listener.accept()
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client):
        backend = None
        try:
            client.settimeout(HELLO_TIMEOUT_SECONDS)
            raw, hello = read_client_hello(client)
            if self._protocol not in offered_protocols(hello):
                log.info("refused a TLS client that does not offer ALPN %s", self._protocol.decode())
                client.sendall(NO_APPLICATION_PROTOCOL_ALERT)
                return
            client.settimeout(None)
            backend = socket.create_connection(("127.0.0.1", self._backend_port))
            backend.sendall(raw)
            upstream = threading.Thread(target=_pipe, args=(client, backend), daemon=True)
            upstream.start()
            _pipe(backend, client)
            upstream.join()
        except (OSError, NotClientHello) as e:
            log.info("ALPN front: %s", e)
        finally:
            client.close()
            if backend is not None:
                backend.close()
