"""What AWS IoT knows about a connecting certificate, read from the emulator through the IoT
API: its id (SHA-256 of the DER, as AWS computes certificate ids), status, attached policies
and attached things."""

import hashlib
import json
import logging
import threading
import time

from cryptography import x509

log = logging.getLogger("fleet.principal")


def certificate_id(der):
    return hashlib.sha256(der).hexdigest()


class Principal:
    def __init__(self, certificate_id, certificate_arn, status, certificate, policies, things):
        self.certificate_id = certificate_id
        self.certificate_arn = certificate_arn
        self.status = status
        self.certificate = certificate
        # [(policy name, parsed document)]
        self.policies = policies
        self.things = things
        self.loaded_at = time.monotonic()
        # client id -> the thing the thing policy variables resolve to (None: no such thing)
        self.thing_by_client = {}

    @property
    def documents(self):
        return [document for _, document in self.policies]

    @property
    def active(self):
        return self.status == "ACTIVE"


def _error_code(error):
    return getattr(error, "response", {}).get("Error", {}).get("Code")


def _pages(call, key, **kwargs):
    marker = None
    while True:
        page = call(**kwargs, **({"marker": marker} if marker else {}))
        yield from page.get(key, [])
        marker = page.get("nextMarker")
        if not marker:
            return


def load(iot, der):
    """The principal for a DER client certificate, or None when AWS IoT does not know it."""
    cert_id = certificate_id(der)
    try:
        description = iot.describe_certificate(certificateId=cert_id)["certificateDescription"]
    except Exception as e:  # the SDK's ResourceNotFoundException, or the emulator being away
        if _error_code(e) == "ResourceNotFoundException":
            return None
        raise
    arn = description["certificateArn"]
    policies = []
    for entry in _pages(iot.list_attached_policies, "policies", target=arn):
        name = entry["policyName"]
        try:
            document = json.loads(iot.get_policy(policyName=name)["policyDocument"])
        except ValueError:
            log.warning("policy %s is not JSON; ignored", name)
            continue
        policies.append((name, document))
    things = list(_pages(iot.list_principal_things, "things", principal=arn))
    return Principal(cert_id, arn, description["status"], x509.load_der_x509_certificate(der),
                     policies, things)


def thing_for(iot, principal, client_id):
    """The thing the thing policy variables resolve to: with AWS IoT's default (non-exclusive)
    thing association, the thing named like the client id, if it is attached to the
    certificate. None otherwise. Kept with the principal (re-read with it)."""
    if client_id not in principal.things:
        return None
    if client_id not in principal.thing_by_client:
        try:
            thing = iot.describe_thing(thingName=client_id)
            found = {"name": thing["thingName"], "type": thing.get("thingTypeName"),
                     "attributes": thing.get("attributes", {})}
        except Exception as e:
            if _error_code(e) != "ResourceNotFoundException":
                raise
            found = None
        principal.thing_by_client[client_id] = found
    return principal.thing_by_client[client_id]


class Cache:
    """Principals by certificate id. A connection is decided on data at most ttl old; checks
    on an open connection use what is known and have it re-read in the background when it is
    older than ttl, so the broker never waits on the emulator for a known certificate."""

    def __init__(self, iot, ttl_seconds, client_ids, on_refreshed):
        self._iot = iot
        self._ttl = ttl_seconds
        self._client_ids = client_ids  # certificate id -> client ids connected with it
        self._on_refreshed = on_refreshed  # called with (certificate id, Principal or None)
        self._entries = {}
        self._refreshing = set()
        self._lock = threading.Lock()

    def _stale(self, entry):
        return time.monotonic() - entry.loaded_at > self._ttl

    def _load(self, der, client_ids=()):
        found = load(self._iot, der)
        if found is not None:
            # Resolved before the entry is published, so checks never wait for describe_thing.
            for client_id in client_ids:
                thing_for(self._iot, found, client_id)
        with self._lock:
            if found is None:
                self._entries.pop(certificate_id(der), None)
            else:
                self._entries[found.certificate_id] = found
        return found

    def for_connect(self, der, client_id):
        """Fresh enough to admit a connection: re-read when older than ttl, and always when it
        was not ACTIVE (an activation takes effect at once; a refusal is never cached)."""
        with self._lock:
            entry = self._entries.get(certificate_id(der))
        if entry is None or self._stale(entry) or not entry.active:
            entry = self._load(der)
        if entry is not None:
            thing_for(self._iot, entry, client_id)
        return entry

    def current(self, der):
        """What is known now; starts a background re-read when it is stale."""
        cert_id = certificate_id(der)
        with self._lock:
            entry = self._entries.get(cert_id)
            refresh = entry is None or (self._stale(entry) and cert_id not in self._refreshing)
            if refresh:
                self._refreshing.add(cert_id)
        if refresh:
            threading.Thread(target=self._refresh, args=(der, cert_id), daemon=True).start()
        return entry

    def _refresh(self, der, cert_id):
        try:
            found = self._load(der, self._client_ids(cert_id))
        except Exception:
            log.exception("could not re-read certificate %s", cert_id[:12])
            return
        finally:
            with self._lock:
                self._refreshing.discard(cert_id)
        self._on_refreshed(cert_id, found)
