"""The stand-in's side of the broker plugin: decides connections and every MQTT operation as AWS
IoT would, and delivers the fleet-provisioning answers to the connection that asked.

AWS IoT rules mirrored here:
- a connection needs a certificate registered and ACTIVE in AWS IoT, and iot:Connect on
  client/<clientId> from the certificate's policies;
- publish, subscribe and receive need iot:Publish, iot:Subscribe, iot:Receive;
- an MQTT 3.1.1 client that publishes without permission is disconnected (MQTT 5 clients get
  PUBACK "not authorized" from the broker instead);
- the fleet-provisioning reserved topics: only the two request topics can be published to,
  requests are never delivered to subscribers, and answers go only to the requesting
  connection, and only if it is subscribed to the answer's topic (AWS: "If you don't subscribe
  to the response topics before you publish a request, you might not receive the results").
What AWS IoT knows of a certificate (status, policies, things) is re-read in the background
when older than PRINCIPAL_TTL_SECONDS; a certificate that is no longer ACTIVE loses its
connections.
"""

import json
import logging
import os
import queue
import socket
import threading
import time

from . import policy, principal, wire
from .provisioning import Requester

log = logging.getLogger("fleet.broker")

PRINCIPAL_TTL_SECONDS = 2.0
_FLEET_PREFIXES = ("$aws/certificates/", "$aws/provisioning-templates/")


def topic_matches(topic_filter, topic):
    """MQTT topic filter matching; a leading wildcard does not match a topic starting with $."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for i, level in enumerate(filter_levels):
        if level == "#":
            return i == len(filter_levels) - 1
        if i >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[i]:
            return False
    return len(filter_levels) == len(topic_levels)


class Connection:
    def __init__(self, connection_id, client_id, certificate_der, certificate_id, clean_session, protocol_version):
        self.id = connection_id
        self.client_id = client_id
        self.certificate_der = certificate_der
        self.certificate_id = certificate_id
        self.clean_session = clean_session
        self.protocol_version = protocol_version
        self.subscriptions = {}  # topic filter -> QoS


class Bridge:
    def __init__(self, iot, region, account, provisioning, executor):
        self._iot = iot
        self._resources = policy.Resources(region, account)
        self._provisioning = provisioning
        self._executor = executor
        self._lock = threading.Lock()
        self._connections = {}
        # Subscriptions of persistent sessions (clean session false), by client id.
        self._sessions = {}
        self._outbox = None
        self._principals = principal.Cache(iot, PRINCIPAL_TTL_SECONDS, self._client_ids, self._refreshed)
        # The socket this process bound (only that one is removed at exit, not a successor's).
        self.socket_inode = None

    # ---- the plugin session ----

    def watch(self):
        """Keeps what is known of connected certificates fresh, so a certificate that is
        revoked or deactivated loses its connections even when they are idle."""
        while True:
            time.sleep(PRINCIPAL_TTL_SECONDS)
            with self._lock:
                certificates = {c.certificate_id: c.certificate_der for c in self._connections.values()}
            for der in certificates.values():
                self._principals.current(der)

    def serve(self, socket_path):
        """Accepts the broker plugin's connections, one at a time."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(socket_path)
        self.socket_inode = os.stat(socket_path).st_ino
        listener.listen(1)
        log.info("waiting for the broker plugin on %s", socket_path)
        while True:
            conn, _ = listener.accept()
            if self._session(conn):
                log.warning("broker plugin disconnected")

    def _session(self, conn):
        """Serves one plugin connection; returns whether it was the plugin (it said HELLO) and
        not a readiness probe."""
        outbox = queue.Queue()
        with self._lock:
            self._connections.clear()
            self._outbox = outbox

        def write():
            while True:
                frame = outbox.get()
                if frame is None:
                    return
                try:
                    conn.sendall(frame)
                except OSError:
                    return

        writer = threading.Thread(target=write, name="plugin-writer", daemon=True)
        writer.start()
        reader = wire.FrameReader()
        hello = False
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                for frame_type, fields in reader.feed(data):
                    if frame_type == wire.HELLO:
                        hello = True
                    self._dispatch(frame_type, fields)
        except (OSError, IndexError, wire.FrameError) as e:
            # IndexError: a frame with fewer fields than its type has.
            log.warning("broker plugin session ended: %s", e)
        finally:
            with self._lock:
                if self._outbox is outbox:
                    self._outbox = None
                self._connections.clear()
            outbox.put(None)
            conn.close()
        return hello

    def _send(self, frame):
        with self._lock:
            outbox = self._outbox
        if outbox is not None:
            outbox.put(frame)

    def _dispatch(self, frame_type, fields):
        if frame_type == wire.HELLO:
            if fields[:1] != [wire.PROTOCOL_VERSION]:
                raise wire.FrameError("unsupported plugin protocol version")
            log.info("broker plugin connected")
        elif frame_type == wire.CONNECT:
            allowed = self._connect(wire.as_u64(fields[1]), fields[2].decode("utf-8", "replace"), fields[3],
                                    wire.as_u64(fields[4]) == 1, wire.as_u64(fields[5]))
            self._send(wire.encode(wire.VERDICT, fields[0], wire.u64(1 if allowed else 0)))
        elif frame_type == wire.ACL:
            allowed = self._acl(wire.as_u64(fields[1]), wire.as_u64(fields[2]),
                                fields[3].decode("utf-8", "replace"), wire.as_u64(fields[4]))
            self._send(wire.encode(wire.VERDICT, fields[0], wire.u64(1 if allowed else 0)))
        elif frame_type == wire.MESSAGE:
            self._message(wire.as_u64(fields[0]), fields[1].decode("utf-8", "replace"), fields[2])
        elif frame_type == wire.DISCONNECT:
            self._disconnect(wire.as_u64(fields[0]))
        else:
            raise wire.FrameError(f"unknown frame type {frame_type}")

    # ---- decisions ----

    def _connect(self, connection_id, client_id, der, clean_session, protocol_version):
        try:
            found = self._principals.for_connect(der, client_id)
        except Exception:
            log.exception("could not look the certificate up; refusing client %r", client_id)
            return False
        if found is None:
            log.info("refused client %r: certificate %s is not registered", client_id,
                     principal.certificate_id(der)[:12])
            return False
        if not found.active:
            log.info("refused client %r: certificate %s is %s", client_id, found.certificate_id[:12], found.status)
            return False
        connection = Connection(connection_id, client_id, der, found.certificate_id, clean_session, protocol_version)
        if not self._allowed(connection, found, "iot:Connect", self._resources.client(client_id)):
            log.info("refused client %r: no iot:Connect (certificate %s)", client_id, found.certificate_id[:12])
            return False
        with self._lock:
            if clean_session:
                self._sessions.pop(client_id, None)
            else:
                connection.subscriptions = dict(self._sessions.get(client_id, {}))
            self._connections[connection_id] = connection
        log.info("client %r connected (certificate %s)", client_id, found.certificate_id[:12])
        return True

    def _client_ids(self, certificate_id):
        with self._lock:
            return [c.client_id for c in self._connections.values() if c.certificate_id == certificate_id]

    def _refreshed(self, certificate_id, found):
        """A certificate that is gone or no longer ACTIVE loses its connections, as in AWS IoT."""
        if found is not None and found.active:
            return
        with self._lock:
            affected = [c for c in self._connections.values() if c.certificate_id == certificate_id]
        for connection in affected:
            log.info("client %r: certificate %s is no longer active; disconnecting", connection.client_id,
                     certificate_id[:12])
            self._send(wire.encode(wire.KICK, wire.u64(connection.id)))

    def _current(self, connection):
        """The connection's principal as known now; None when it lost its right to be."""
        found = self._principals.current(connection.certificate_der)
        if found is None or not found.active:
            return None
        return found

    def _allowed(self, connection, found, action, resource):
        thing = principal.thing_for(self._iot, found, connection.client_id)
        variables = policy.Variables(connection.client_id, found.certificate, found.things, thing)
        return policy.is_allowed(found.documents, action, resource, variables)

    def _acl(self, connection_id, access, topic, qos):
        with self._lock:
            connection = self._connections.get(connection_id)
        if connection is None:
            return False
        if access == wire.ACCESS_UNSUBSCRIBE:
            with self._lock:
                connection.subscriptions.pop(topic, None)
                self._remember_session(connection)
            return True
        found = self._current(connection)
        if found is None:
            return False
        fleet_topic = topic.startswith(_FLEET_PREFIXES)
        if access == wire.ACCESS_READ:
            # Requests are for AWS IoT only; answers are delivered by deliver(), not by pub/sub.
            if fleet_topic:
                return False
            return self._allowed(connection, found, "iot:Receive", self._resources.topic(topic))
        if access == wire.ACCESS_WRITE:
            allowed = (not fleet_topic or self._provisioning.handles(topic)) and \
                self._allowed(connection, found, "iot:Publish", self._resources.topic(topic))
            if not allowed:
                log.info("client %r may not publish to %r", connection.client_id, topic)
                if connection.protocol_version < 5:
                    self._send(wire.encode(wire.KICK, wire.u64(connection.id)))
            return allowed
        if access == wire.ACCESS_SUBSCRIBE:
            allowed = self._allowed(connection, found, "iot:Subscribe", self._resources.topic_filter(topic))
            if allowed:
                with self._lock:
                    connection.subscriptions[topic] = min(qos, 1)
                    self._remember_session(connection)
            else:
                log.info("client %r may not subscribe to %r", connection.client_id, topic)
            return allowed
        return False

    def _remember_session(self, connection):
        if not connection.clean_session:
            self._sessions[connection.client_id] = dict(connection.subscriptions)

    # ---- the fleet-provisioning API ----

    def _message(self, connection_id, topic, payload):
        with self._lock:
            connection = self._connections.get(connection_id)
        if connection is None:
            return
        if not self._provisioning.handles(topic):
            log.info("client %r published to %r: not an API this stand-in implements", connection.client_id, topic)
            return
        requester = Requester(connection.client_id, connection.certificate_id)
        self._executor.submit(self._answer, connection_id, requester, topic, payload)

    def _answer(self, connection_id, requester, topic, payload):
        try:
            answer_topic, answer = self._provisioning.handle(requester, topic, payload)
        except Exception:
            log.exception("request on %r failed", topic)
            return
        self.deliver(connection_id, answer_topic, json.dumps(answer).encode("utf-8"))

    def deliver(self, connection_id, topic, payload):
        """Publishes to one connection, if it is still there and subscribed to the topic."""
        with self._lock:
            connection = self._connections.get(connection_id)
            if connection is None:
                log.info("answer on %r dropped: the requesting connection is gone", topic)
                return False
            qos = [q for f, q in connection.subscriptions.items() if topic_matches(f, topic)]
        if not qos:
            log.info("answer on %r dropped: client %r is not subscribed to it", topic, connection.client_id)
            return False
        found = self._current(connection)
        if found is None or not self._allowed(connection, found, "iot:Receive", self._resources.topic(topic)):
            log.info("answer on %r dropped: client %r may not receive it", topic, connection.client_id)
            return False
        self._send(wire.encode(wire.DELIVER, wire.u64(connection_id), connection.client_id, topic, payload,
                               wire.u64(max(qos))))
        return True

    def _disconnect(self, connection_id):
        with self._lock:
            connection = self._connections.pop(connection_id, None)
        if connection is not None:
            log.info("client %r disconnected", connection.client_id)
