import logging
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
logging.disable(logging.CRITICAL)  # the stand-in logs every refusal; the assertions say what matters

from fleet import claim_policy_document  # noqa: E402
from standin.policy import Resources, Variables, is_allowed  # noqa: E402

R = Resources("us-east-1", "123456789012")
ARN = "arn:aws:iot:us-east-1:123456789012"

# The local stack's default device policy (tests/local-stack/stack.py provision).
DEVICE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect",
         "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
        {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
         "Resource": "arn:aws:iot:*:*:topic/things/${iot:Connection.Thing.ThingName}/*"},
        {"Effect": "Allow", "Action": "iot:Subscribe",
         "Resource": "arn:aws:iot:*:*:topicfilter/things/${iot:Connection.Thing.ThingName}/*"},
    ],
}


def device(client_id, attached=("dev-1",)):
    thing = {"name": client_id, "type": None, "attributes": {"site": "lab"}} if client_id in attached else None
    return Variables(client_id, attached_things=attached, thing=thing)


class ClaimPolicy(unittest.TestCase):
    doc = claim_policy_document("us-east-1", "123456789012", "cvm-fleet")
    v = Variables("any-client")

    def allowed(self, action, resource):
        return is_allowed([self.doc], action, resource, self.v)

    def test_allows_exactly_the_provisioning_requests_and_answers(self):
        self.assertTrue(self.allowed("iot:Connect", R.client("any-client")))
        for topic in ("$aws/certificates/create-from-csr/json",
                      "$aws/provisioning-templates/cvm-fleet/provision/json"):
            self.assertTrue(self.allowed("iot:Publish", R.topic(topic)))
            for outcome in ("accepted", "rejected"):
                self.assertTrue(self.allowed("iot:Subscribe", R.topic_filter(f"{topic}/{outcome}")))
                self.assertTrue(self.allowed("iot:Receive", R.topic(f"{topic}/{outcome}")))
                self.assertFalse(self.allowed("iot:Publish", R.topic(f"{topic}/{outcome}")))

    def test_refuses_everything_else(self):
        self.assertFalse(self.allowed("iot:Publish", R.topic("$aws/provisioning-templates/other/provision/json")))
        self.assertFalse(self.allowed("iot:Publish", R.topic("$aws/certificates/create/json")))
        self.assertFalse(self.allowed("iot:Publish", R.topic("things/dev-1/telemetry")))
        self.assertFalse(self.allowed("iot:Subscribe", R.topic_filter("#")))
        self.assertFalse(self.allowed("iot:Subscribe", R.topic_filter("$aws/certificates/create-from-csr/json/+")))
        self.assertFalse(self.allowed("iot:Subscribe", R.topic_filter("$aws/certificates/create-from-csr/json")))
        self.assertFalse(self.allowed("iot:Receive", R.topic("$aws/certificates/create-from-csr/json")))
        self.assertFalse(self.allowed("iot:GetThingShadow", R.topic("$aws/certificates/create-from-csr/json")))


class DevicePolicy(unittest.TestCase):
    def test_thing_name_is_the_attached_thing_named_like_the_client(self):
        v = device("dev-1")
        self.assertTrue(is_allowed([DEVICE_POLICY], "iot:Connect", R.client("dev-1"), v))
        self.assertTrue(is_allowed([DEVICE_POLICY], "iot:Publish", R.topic("things/dev-1/telemetry"), v))
        self.assertTrue(is_allowed([DEVICE_POLICY], "iot:Subscribe", R.topic_filter("things/dev-1/cmd"), v))
        self.assertFalse(is_allowed([DEVICE_POLICY], "iot:Publish", R.topic("things/dev-2/telemetry"), v))
        self.assertFalse(is_allowed([DEVICE_POLICY], "iot:Publish", R.topic("things/dev-1"), v))

    def test_a_client_id_that_is_not_an_attached_thing_gets_nothing(self):
        v = device("dev-2")  # the certificate is attached to dev-1 only
        self.assertFalse(is_allowed([DEVICE_POLICY], "iot:Connect", R.client("dev-2"), v))
        self.assertFalse(is_allowed([DEVICE_POLICY], "iot:Publish", R.topic("things/dev-2/x"), v))

    def test_wildcards_cross_levels_and_variables_are_literal(self):
        doc = {"Statement": {"Effect": "Allow", "Action": "iot:Publish", "Resource": f"{ARN}:topic/a/${{iot:ClientId}}/?"}}
        self.assertTrue(is_allowed([doc], "iot:Publish", R.topic("a/c*/x"), Variables("c*")))
        self.assertFalse(is_allowed([doc], "iot:Publish", R.topic("a/cX/x"), Variables("c*")))
        self.assertFalse(is_allowed([doc], "iot:Publish", R.topic("a/c*/xy"), Variables("c*")))
        star = {"Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": f"{ARN}:topic/a/*"}]}
        self.assertTrue(is_allowed([star], "iot:Publish", R.topic("a/b/c/d"), Variables("c")))
        self.assertTrue(is_allowed([star], "IOT:publish", R.topic("a/b"), Variables("c")))
        self.assertFalse(is_allowed([star], "iot:Publish", R.topic("A/b"), Variables("c")))

    def test_escapes(self):
        doc = {"Statement": [{"Effect": "Allow", "Action": "iot:Publish", "Resource": f"{ARN}:topic/${{$}}x/${{*}}"}]}
        self.assertTrue(is_allowed([doc], "iot:Publish", R.topic("$x/*"), Variables("c")))
        self.assertFalse(is_allowed([doc], "iot:Publish", R.topic("$x/y"), Variables("c")))


class Evaluation(unittest.TestCase):
    allow_all = {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}

    def test_explicit_deny_wins_over_any_allow(self):
        deny = {"Statement": [{"Effect": "Deny", "Action": "iot:Publish", "Resource": f"{ARN}:topic/secret/*"}]}
        self.assertFalse(is_allowed([self.allow_all, deny], "iot:Publish", R.topic("secret/x"), Variables("c")))
        self.assertTrue(is_allowed([self.allow_all, deny], "iot:Publish", R.topic("open/x"), Variables("c")))

    def test_nothing_attached_denies(self):
        self.assertFalse(is_allowed([], "iot:Connect", R.client("c"), Variables("c")))

    def test_not_action_and_not_resource(self):
        doc = {"Statement": [{"Effect": "Allow", "NotAction": "iot:Publish", "NotResource": f"{ARN}:topic/x"}]}
        self.assertTrue(is_allowed([doc], "iot:Receive", R.topic("y"), Variables("c")))
        self.assertFalse(is_allowed([doc], "iot:Publish", R.topic("y"), Variables("c")))
        self.assertFalse(is_allowed([doc], "iot:Receive", R.topic("x"), Variables("c")))

    def test_statement_without_effect_or_resource_grants_nothing(self):
        for statement in ({"Action": "*", "Resource": "*"}, {"Effect": "Allow", "Action": "*"},
                          {"Effect": "Allow", "Resource": "*"}, {"Effect": "allow", "Action": "*", "Resource": "*"}):
            self.assertFalse(is_allowed([{"Statement": [statement]}], "iot:Connect", R.client("c"), Variables("c")))

    def test_is_attached_condition(self):
        doc = {"Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*",
                              "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": ["true"]}}}]}
        self.assertTrue(is_allowed([doc], "iot:Connect", R.client("dev-1"), device("dev-1")))
        self.assertFalse(is_allowed([doc], "iot:Connect", R.client("dev-9"), device("dev-9")))

    def test_string_conditions_and_attributes(self):
        doc = {"Statement": [{"Effect": "Allow", "Action": "iot:Publish", "Resource": "*",
                              "Condition": {"StringEquals": {"iot:Connection.Thing.Attributes[site]": "lab"},
                                            "StringLike": {"iot:ClientId": "dev-*"}}}]}
        self.assertTrue(is_allowed([doc], "iot:Publish", R.topic("t"), device("dev-1")))
        elsewhere = Variables("dev-1", attached_things=("dev-1",), thing={"name": "dev-1", "attributes": {"site": "home"}})
        self.assertFalse(is_allowed([doc], "iot:Publish", R.topic("t"), elsewhere))
        self.assertFalse(is_allowed([doc], "iot:Publish", R.topic("t"), device("other")))

    def test_unsupported_constructs_fail_closed(self):
        allow = {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*",
                                "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}}]}
        self.assertFalse(is_allowed([allow], "iot:Connect", R.client("c"), Variables("c")))
        deny = {"Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*",
                               "Condition": {"StringEquals": {"iot:Unknown.Key": "x"}}}]}
        self.assertFalse(is_allowed([self.allow_all, deny], "iot:Connect", R.client("c"), Variables("c")))
        unknown_variable = {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "${iot:Nope}"}]}
        self.assertFalse(is_allowed([unknown_variable], "iot:Connect", R.client("c"), Variables("c")))


if __name__ == "__main__":
    unittest.main()
