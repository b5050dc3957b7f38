"""Fleet-provisioning templates, evaluated as AWS IoT does for RegisterThing
(https://docs.aws.amazon.com/iot/latest/developerguide/provision-template.html), to the extent
the local stack needs:

- Parameters with Type String and an optional Default. Every declared parameter needs a value
  (from the request, the hook's parameterOverrides, or its Default); undeclared request
  parameters are ignored.
- Intrinsic functions Ref, Fn::Join, Fn::Select, Fn::Split and Fn::Sub (${Name} only).
- Resources AWS::IoT::Thing (ThingName, AttributePayload, ThingTypeName, ThingGroups,
  OverrideSettings), AWS::IoT::Certificate (CertificateId, Status) and AWS::IoT::Policy
  (PolicyName).
- DeviceConfiguration, returned to the device.

Anything else (Conditions, Fn::If, Fn::FindInMap, PolicyDocument, CertificatePem, ...) is
refused with TemplateUnsupported rather than guessed at.
"""

import re

CERTIFICATE_ID_PARAMETER = "AWS::IoT::Certificate::Id"
OVERRIDE_ACTIONS = ("MERGE", "REPLACE", "FAIL", "DO_NOTHING")


class TemplateError(Exception):
    """The request does not satisfy the template (missing parameter, bad value)."""


class TemplateUnsupported(Exception):
    """The template uses a construct the local stand-in does not implement."""


class Thing:
    def __init__(self, name, attributes, thing_type, groups, overrides):
        self.name = name
        self.attributes = attributes
        self.thing_type = thing_type
        self.groups = groups
        # AttributePayload / ThingTypeName / ThingGroups -> MERGE | REPLACE | FAIL | DO_NOTHING
        self.overrides = overrides


class Plan:
    """What RegisterThing creates for one request."""

    def __init__(self):
        self.thing = None
        self.certificate_id = None
        self.certificate_status = None
        self.policy_names = []
        self.device_configuration = {}


def _parameter_values(template, parameters):
    declared = template.get("Parameters", {})
    if not isinstance(declared, dict):
        raise TemplateUnsupported("Parameters must be an object")
    values = {}
    for name, spec in declared.items():
        spec = spec if isinstance(spec, dict) else {}
        if spec.get("Type", "String") != "String":
            raise TemplateUnsupported(f"parameter {name} has type {spec.get('Type')}")
        if name in parameters:
            values[name] = parameters[name]
        elif "Default" in spec:
            values[name] = str(spec["Default"])
        else:
            raise TemplateError(f"Missing value for template parameter {name}")
    return values


def _evaluate(node, values):
    if isinstance(node, str):
        return node
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return str(node)
    if isinstance(node, list):
        return [_evaluate(item, values) for item in node]
    if not isinstance(node, dict) or len(node) != 1:
        raise TemplateUnsupported(f"cannot evaluate {type(node).__name__} {node!r:.80}")
    (function, argument), = node.items()
    if function == "Ref":
        if argument not in values:
            raise TemplateError(f"Ref to unknown parameter {argument}")
        return values[argument]
    if function == "Fn::Join":
        separator, items = _arguments(function, argument, 2)
        items = _evaluate(items, values)
        if not isinstance(separator, str) or not isinstance(items, list):
            raise TemplateUnsupported("Fn::Join takes a separator and a list")
        return separator.join(_text(item) for item in items)
    if function == "Fn::Select":
        index, items = _arguments(function, argument, 2)
        items = _evaluate(items, values)
        try:
            return items[int(_evaluate(index, values))]
        except (ValueError, IndexError, TypeError):
            raise TemplateError("Fn::Select index out of range")
    if function == "Fn::Split":
        separator, text = _arguments(function, argument, 2)
        return _text(_evaluate(text, values)).split(separator)
    if function == "Fn::Sub":
        if not isinstance(argument, str):
            raise TemplateUnsupported("Fn::Sub with a variable map")

        def substitute(match):
            name = match.group(1)
            if name not in values:
                raise TemplateError(f"Fn::Sub references unknown parameter {name}")
            return values[name]

        return re.sub(r"\$\{([^}!]+)\}", substitute, argument)
    raise TemplateUnsupported(f"intrinsic function {function}")


def _arguments(function, argument, count):
    if not isinstance(argument, list) or len(argument) != count:
        raise TemplateUnsupported(f"{function} takes {count} arguments")
    return argument


def _text(value):
    if not isinstance(value, str):
        raise TemplateError("expected a string value")
    return value


def plan(template, parameters, certificate_id):
    """Evaluates the template for the (merged) request parameters and the certificate that
    the ownership token stands for."""
    if not isinstance(template, dict):
        raise TemplateUnsupported("the template is not a JSON object")
    for section in ("Conditions", "Mappings"):
        if section in template:
            raise TemplateUnsupported(f"the {section} section")
    values = _parameter_values(template, dict(parameters, **{CERTIFICATE_ID_PARAMETER: certificate_id}))
    values[CERTIFICATE_ID_PARAMETER] = certificate_id
    result = Plan()
    resources = template.get("Resources", {})
    if not isinstance(resources, dict):
        raise TemplateUnsupported("Resources must be an object")
    for logical_id, resource in resources.items():
        if not isinstance(resource, dict):
            raise TemplateUnsupported(f"resource {logical_id} is not an object")
        kind = resource.get("Type")
        properties = resource.get("Properties", {})
        if kind == "AWS::IoT::Thing":
            if result.thing is not None:
                raise TemplateUnsupported("more than one thing")
            result.thing = _thing(properties, resource.get("OverrideSettings", {}), values)
        elif kind == "AWS::IoT::Certificate":
            _certificate(result, properties, values, certificate_id)
        elif kind == "AWS::IoT::Policy":
            if "PolicyDocument" in properties or "PolicyName" not in properties:
                raise TemplateUnsupported("a policy resource without PolicyName (PolicyDocument)")
            result.policy_names.append(_text(_evaluate(properties["PolicyName"], values)))
        else:
            raise TemplateUnsupported(f"resource type {kind}")
    configuration = template.get("DeviceConfiguration", {})
    if not isinstance(configuration, dict):
        raise TemplateUnsupported("DeviceConfiguration must be an object")
    result.device_configuration = {k: _text(_evaluate(v, values)) for k, v in configuration.items()}
    return result


def _thing(properties, override_settings, values):
    name = _text(_evaluate(properties.get("ThingName"), values)) if "ThingName" in properties else None
    if not name:
        raise TemplateError("ThingName is empty")
    if not re.fullmatch(r"[a-zA-Z0-9:_-]{1,128}", name):
        raise TemplateError("ThingName is not a valid thing name")
    attributes = {}
    for key, value in (properties.get("AttributePayload") or {}).items():
        attributes[key] = _text(_evaluate(value, values))
    thing_type = properties.get("ThingTypeName")
    thing_type = _text(_evaluate(thing_type, values)) if thing_type is not None else None
    groups = [_text(g) for g in _evaluate(properties.get("ThingGroups", []), values)]
    overrides = {}
    for setting in ("AttributePayload", "ThingTypeName", "ThingGroups"):
        action = override_settings.get(setting, "DO_NOTHING")
        if action not in OVERRIDE_ACTIONS:
            raise TemplateUnsupported(f"OverrideSettings {setting}={action}")
        overrides[setting] = action
    return Thing(name, attributes, thing_type, groups, overrides)


def _certificate(result, properties, values, certificate_id):
    if "CertificateId" not in properties:
        raise TemplateUnsupported("a certificate resource without CertificateId")
    if result.certificate_id is not None:
        raise TemplateUnsupported("more than one certificate")
    wanted = _text(_evaluate(properties["CertificateId"], values))
    if wanted != certificate_id:
        raise TemplateError("CertificateId is not the certificate of the ownership token")
    status = _text(_evaluate(properties.get("Status", "ACTIVE"), values)).upper()
    if status not in ("ACTIVE", "INACTIVE"):
        raise TemplateError(f"certificate Status {status}")
    result.certificate_id = wanted
    result.certificate_status = status
