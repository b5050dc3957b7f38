"""AWS IoT Core policy evaluation for the local broker.

What AWS IoT does for every CONNECT, PUBLISH, SUBSCRIBE and delivered message, as far as the
local stack needs it: the policies attached to the connection's certificate are evaluated for
`iot:Connect` on `client/<clientId>`, `iot:Publish` and `iot:Receive` on `topic/<topic>`,
`iot:Subscribe` on `topicfilter/<filter>`. An explicit Deny wins, then any Allow, else deny.

Supported: Action/NotAction and Resource/NotResource with `*` and `?` wildcards (actions match
case-insensitively, resources case-sensitively, `*` crosses `/` as in IAM), policy variables
`${iot:ClientId}`, `${iot:Connection.Thing.ThingName}`, `...ThingTypeName`, `...IsAttached`,
`...Attributes[name]`, `${iot:Certificate.Subject.*}` and `${iot:Certificate.Issuer.*}`, the
escapes `${*}`, `${?}`, `${$}`, and Condition operators StringEquals, StringNotEquals,
StringLike, StringNotLike and Bool (each also ...IfExists). A variable that cannot be resolved
makes its resource match nothing (AWS: "this variable won't be resolved and will result in an
access denied error"). Anything else (another operator or condition key) fails closed: such an
Allow statement grants nothing and such a Deny statement denies.
"""

import fnmatch
import logging
import re

log = logging.getLogger("fleet.policy")

# Unresolvable: the thing variables when no thing is attached under the client id, for example.
UNRESOLVED = object()

_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_ESCAPES = {"*": "*", "?": "?", "$": "$"}


class Unsupported(Exception):
    """A policy construct this evaluator does not implement."""


class Variables:
    """The values policy variables and condition keys resolve to for one connection."""

    def __init__(self, client_id, certificate=None, attached_things=(), thing=None):
        """certificate: a cryptography x509.Certificate; thing: dict with name, type,
        attributes of the thing named like the client id and attached to the certificate."""
        self.client_id = client_id
        self.certificate = certificate
        self.attached_things = frozenset(attached_things)
        self.thing = thing

    def resolve(self, name):
        """The variable's value, UNRESOLVED, or raises Unsupported for unknown names."""
        if name == "iot:ClientId":
            return self.client_id
        if name == "iot:Connection.Thing.IsAttached":
            return "true" if self.client_id in self.attached_things else "false"
        if name.startswith("iot:Connection.Thing."):
            if self.thing is None:
                return UNRESOLVED
            rest = name[len("iot:Connection.Thing."):]
            if rest == "ThingName":
                return self.thing["name"]
            if rest == "ThingTypeName":
                return self.thing.get("type") or UNRESOLVED
            match = re.fullmatch(r"Attributes\[(.+)\]", rest)
            if match:
                value = self.thing.get("attributes", {}).get(match.group(1))
                return UNRESOLVED if value is None else value
            raise Unsupported(f"policy variable {name}")
        for part in ("Subject", "Issuer"):
            prefix = f"iot:Certificate.{part}."
            if name.startswith(prefix):
                return self._certificate_name(part, name[len(prefix):])
        raise Unsupported(f"policy variable {name}")

    def _certificate_name(self, part, attribute):
        from cryptography.x509.oid import NameOID

        oids = {
            "CommonName": NameOID.COMMON_NAME,
            "Organization": NameOID.ORGANIZATION_NAME,
            "OrganizationalUnit": NameOID.ORGANIZATIONAL_UNIT_NAME,
            "Country": NameOID.COUNTRY_NAME,
            "Locality": NameOID.LOCALITY_NAME,
            "State": NameOID.STATE_OR_PROVINCE_NAME,
            "SerialNumber": NameOID.SERIAL_NUMBER,
        }
        if attribute not in oids:
            raise Unsupported(f"policy variable iot:Certificate.{part}.{attribute}")
        if self.certificate is None:
            return UNRESOLVED
        name = self.certificate.subject if part == "Subject" else self.certificate.issuer
        values = name.get_attributes_for_oid(oids[attribute])
        return values[0].value if len(values) == 1 else UNRESOLVED


def _pattern_regex(pattern, variables):
    """A regex for a Resource entry after substituting variables, or None when a variable is
    unresolvable. Substituted values are literal: a `*` in a client id is not a wildcard."""
    out = []
    position = 0
    for match in _VARIABLE.finditer(pattern):
        out.append(_glob_regex(pattern[position:match.start()]))
        name = match.group(1)
        if name in _ESCAPES:
            out.append(re.escape(_ESCAPES[name]))
        else:
            value = variables.resolve(name)
            if value is UNRESOLVED:
                return None
            out.append(re.escape(value))
        position = match.end()
    out.append(_glob_regex(pattern[position:]))
    return re.compile("".join(out), re.DOTALL)


def _glob_regex(text):
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text)


def _as_list(value):
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _action_matches(patterns, action):
    return any(isinstance(p, str) and fnmatch.fnmatchcase(action.lower(), p.lower()) for p in patterns)


def _resource_matches(patterns, resource, variables):
    for pattern in patterns:
        if not isinstance(pattern, str):
            continue
        regex = _pattern_regex(pattern, variables)
        if regex is not None and regex.fullmatch(resource):
            return True
    return False


def _substitute(value, variables):
    """Substitutes variables in a condition value; None when one is unresolvable."""
    out = []
    position = 0
    for match in _VARIABLE.finditer(value):
        out.append(value[position:match.start()])
        name = match.group(1)
        resolved = _ESCAPES.get(name) or variables.resolve(name)
        if resolved is UNRESOLVED:
            return None
        out.append(resolved)
        position = match.end()
    out.append(value[position:])
    return "".join(out)


def _condition_holds(condition, variables):
    if not isinstance(condition, dict):
        raise Unsupported("Condition must be an object")
    for operator, tests in condition.items():
        if not isinstance(tests, dict):
            raise Unsupported(f"Condition {operator} must be an object")
        if_exists = operator.endswith("IfExists")
        base = operator[:-len("IfExists")] if if_exists else operator
        for key, expected in tests.items():
            actual = variables.resolve(key)
            wanted = [v if isinstance(v, str) else str(v).lower() for v in _as_list(expected)]
            if actual is UNRESOLVED:
                if if_exists or base in ("StringNotEquals", "StringNotLike"):
                    continue
                return False
            if base in ("StringEquals", "Bool"):
                hit = any(_substitute(w, variables) == actual for w in wanted)
            elif base == "StringNotEquals":
                hit = not any(_substitute(w, variables) == actual for w in wanted)
            elif base in ("StringLike", "StringNotLike"):
                like = False
                for w in wanted:
                    regex = _pattern_regex(w, variables)
                    like = like or bool(regex and regex.fullmatch(actual))
                hit = like if base == "StringLike" else not like
            else:
                raise Unsupported(f"Condition operator {operator}")
            if not hit:
                return False
    return True


def _statement_applies(statement, action, resource, variables):
    if "Action" in statement:
        if not _action_matches(_as_list(statement["Action"]), action):
            return False
    elif "NotAction" in statement:
        if _action_matches(_as_list(statement["NotAction"]), action):
            return False
    else:
        return False
    if "Resource" in statement:
        if not _resource_matches(_as_list(statement["Resource"]), resource, variables):
            return False
    elif "NotResource" in statement:
        if _resource_matches(_as_list(statement["NotResource"]), resource, variables):
            return False
    else:
        return False
    if "Condition" in statement:
        return _condition_holds(statement["Condition"], variables)
    return True


def statements(document):
    body = document.get("Statement") if isinstance(document, dict) else None
    return [s for s in _as_list(body) if isinstance(s, dict)]


def is_allowed(documents, action, resource, variables):
    """Whether the policy documents (parsed JSON) allow action on resource."""
    allowed = False
    for document in documents:
        for statement in statements(document):
            effect = statement.get("Effect")
            if effect not in ("Allow", "Deny"):
                continue
            try:
                applies = _statement_applies(statement, action, resource, variables)
            except Unsupported as e:
                log.warning("policy statement not evaluated (%s): %s", e, "denies" if effect == "Deny" else "grants nothing")
                applies = effect == "Deny"
            if applies and effect == "Deny":
                return False
            allowed = allowed or applies
    return allowed


class Resources:
    """The ARNs AWS IoT authorizes MQTT operations against."""

    def __init__(self, region, account):
        self._prefix = f"arn:aws:iot:{region}:{account}:"

    def client(self, client_id):
        return f"{self._prefix}client/{client_id}"

    def topic(self, topic):
        return f"{self._prefix}topic/{topic}"

    def topic_filter(self, topic_filter):
        return f"{self._prefix}topicfilter/{topic_filter}"
