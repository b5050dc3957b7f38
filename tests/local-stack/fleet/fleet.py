"""The local stack's fleet-provisioning part: a Mosquitto broker that decides as AWS IoT Core does
(plugin/cvm_iot_bridge.c) and a stand-in for AWS IoT's side of the fleet-provisioning MQTT API
that runs the real certificate-provider and pre-provisioning-hook bootstraps through a local
Lambda Runtime API. tests/local-stack/README.md describes it and where it differs from AWS.

Subcommands:
  prepare ...          create the broker's PKI and the claim certificate (once), register the
                       claim certificate and its policy in the emulator, write mosquitto.conf
                       and the stand-in's configuration (each `make up`)
  serve --config FILE  run the stand-in
  wait --socket PATH | --port N
                       wait until the stand-in's socket or a TCP port on 127.0.0.1 answers
"""

import argparse
import concurrent.futures
import getpass
import json
import logging
import os
import signal
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from standin import pki  # noqa: E402

CLAIM_POLICY = "cvm-fleet-claim"
ALPN_PROTOCOL = "x-amzn-mqtt-ca"
SCRIPTED_HOOK_MODES = ("allow", "deny", "error", "timeout", "crash", "init-error", "bad-answer")
# AWS IoT's message size quota is 128 KiB of payload; the packet limit leaves room for the topic.
MAX_PACKET_SIZE = 128 * 1024 + 4096

log = logging.getLogger("fleet")


def _iot(region):
    import boto3
    from botocore.config import Config

    return boto3.client("iot", region_name=region, config=Config(max_pool_connections=32,
                                                                 retries={"mode": "standard"}))


def claim_policy_document(region, account, template_name):
    """Exactly what a device needs to provision itself by claim with one template: connect,
    the two request topics, and the accepted/rejected answers of each."""
    arn = f"arn:aws:iot:{region}:{account}"
    requests = ["$aws/certificates/create-from-csr/json",
                f"$aws/provisioning-templates/{template_name}/provision/json"]
    answers = [f"{topic}/{outcome}" for topic in requests for outcome in ("accepted", "rejected")]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{arn}:client/*"},
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": [f"{arn}:topic/{t}" for t in requests]},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": [f"{arn}:topicfilter/{t}" for t in answers]},
            {"Effect": "Allow", "Action": "iot:Receive", "Resource": [f"{arn}:topic/{t}" for t in answers]},
        ],
    }


def register_claim(iot, claim_cert_path, region, template_name):
    """Registers the claim certificate ACTIVE (RegisterCertificateWithoutCA) with the claim
    policy attached; idempotent. Returns (certificate id, account id)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from standin import principal

    with open(claim_cert_path) as f:
        pem = f.read()
    try:
        registered = iot.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")
        certificate_id, arn = registered["certificateId"], registered["certificateArn"]
    except iot.exceptions.ResourceAlreadyExistsException:
        der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
        certificate_id = principal.certificate_id(der)
        arn = iot.describe_certificate(certificateId=certificate_id)["certificateDescription"]["certificateArn"]
        iot.update_certificate(certificateId=certificate_id, newStatus="ACTIVE")
    account = arn.split(":")[4]
    document = json.dumps(claim_policy_document(region, account, template_name))
    try:
        iot.create_policy(policyName=CLAIM_POLICY, policyDocument=document)
    except iot.exceptions.ResourceAlreadyExistsException:
        pass
    iot.attach_policy(policyName=CLAIM_POLICY, target=arn)
    return certificate_id, account


def _env_pairs(pairs):
    out = {}
    for pair in pairs or []:
        function, _, assignment = pair.partition(":")
        key, _, value = assignment.partition("=")
        if not function or not key:
            raise SystemExit(f"--env takes FUNCTION:KEY=VALUE, not {pair!r}")
        out.setdefault(function, {})[key] = value
    return out


def prepare(args):
    local = os.path.abspath(args.local)
    mqtt_dir = os.path.join(local, "mqtt")
    os.makedirs(mqtt_dir, mode=0o700, exist_ok=True)
    paths = pki.ensure(os.path.join(local, "pki"))

    # The client CAs the broker accepts: the device CA (vend in iot mode), the Private CA (vend in
    # acm-pca mode, the certificate provider) and the claim CA. A client certificate must also be
    # registered and ACTIVE in the emulated AWS IoT, which the plugin checks on every CONNECT.
    bundle = b""
    for name in ("device-ca.pem", "pca-ca.pem"):
        with open(os.path.join(local, "pki", name), "rb") as f:
            bundle += f.read().strip() + b"\n"
    with open(paths["claim_ca"], "rb") as f:
        bundle += f.read().strip() + b"\n"
    client_cas = os.path.join(mqtt_dir, "client-cas.pem")
    pki.write(client_cas, bundle, 0o644)

    region = os.environ.get("AWS_REGION", "us-east-1")
    iot = _iot(region)
    claim_id, account = register_claim(iot, paths["claim_cert"], region, args.template_name)

    socket_path = os.path.join(mqtt_dir, "standin.sock")
    conf = os.path.join(mqtt_dir, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"""# Written by tests/local-stack/fleet/fleet.py prepare on every `make up`: do not edit.
per_listener_settings false
allow_anonymous false
persistence false
user {getpass.getuser()}
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
max_packet_size {MAX_PACKET_SIZE}
plugin {os.path.abspath(args.plugin)}
plugin_opt_socket {socket_path}

# AWS IoT's port 8883: MQTT over mutual TLS. Port 443 with ALPN {ALPN_PROTOCOL} is the
# stand-in's ALPN front (127.0.0.1:{args.alpn_port}), which passes TLS through to here.
listener {args.mqtt_port} 127.0.0.1
cafile {client_cas}
certfile {paths['mqtt_server_cert']}
keyfile {paths['mqtt_server_key']}
require_certificate true
use_identity_as_username false
tls_version tlsv1.2
""")

    aws_env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID",
                                          "AWS_SECRET_ACCESS_KEY") if k in os.environ}
    aws_env.update({"AWS_DEFAULT_REGION": region, "AWS_EC2_METADATA_DISABLED": "true",
                    "PATH": "/usr/local/bin:/usr/bin:/bin", "TZ": ":UTC", "LANG": "C.UTF-8"})
    extra = _env_pairs(args.env)
    functions = {
        "cert-provider": {"command": [os.path.abspath(args.provider)],
                          "env": dict(aws_env, **extra.get("cert-provider", {}))},
        "provisioning-hook": {"command": [os.path.abspath(args.hook)],
                              "env": dict(aws_env, **extra.get("provisioning-hook", {}))},
    }
    templates = {args.template_name: {"body": os.path.abspath(args.template_body), "hook": "provisioning-hook"}}
    # Templates for the stand-in's own tests, each with a scripted hook (faults/scripted_hook.py)
    # or a bootstrap that does not exist. Only principals with a policy naming them can use them.
    script = os.path.join(HERE, "faults", "scripted_hook.py")
    for mode in SCRIPTED_HOOK_MODES:
        functions[f"scripted-hook-{mode}"] = {
            "command": [sys.executable, script, mode],
            "env": dict(aws_env, SCRIPTED_HOOK_POLICY_NAME=args.device_policy)}
        templates[f"{args.template_name}-test-{mode}"] = {"body": os.path.abspath(args.template_body),
                                                         "hook": f"scripted-hook-{mode}"}
    functions["missing-hook"] = {"command": [os.path.join(local, "no-such-bootstrap")], "env": aws_env}
    templates[f"{args.template_name}-test-missing"] = {"body": os.path.abspath(args.template_body),
                                                      "hook": "missing-hook"}
    config = {
        "region": region,
        "account": account,
        "socket": socket_path,
        "mqtt_port": args.mqtt_port,
        "alpn_port": args.alpn_port,
        "alpn_protocol": ALPN_PROTOCOL,
        "log_dir": local,
        "certificate_provider": "cert-provider",
        "functions": functions,
        "templates": templates,
    }
    pki.write(os.path.join(mqtt_dir, "standin.json"), json.dumps(config, indent=2).encode(), 0o600)
    print(f"claim certificate {claim_id} registered with policy {CLAIM_POLICY}")


def serve(args):
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    from standin import alpn, broker, provisioning, runtime

    with open(args.config) as f:
        config = json.load(f)
    region, account = config["region"], config["account"]
    iot = _iot(region)

    functions = {}
    for name, spec in config["functions"].items():
        log_path = os.path.join(config["log_dir"], f"lambda-{name}.log")
        open(log_path, "w").close()  # one run's output per file, as the other logs of the stack
        functions[name] = runtime.LambdaFunction(
            name, spec["command"], spec["env"], f"arn:aws:lambda:{region}:{account}:function:{name}", log_path)
    templates = {}
    for name, spec in config["templates"].items():
        with open(spec["body"]) as f:
            body = json.load(f)
        templates[name] = provisioning.Template(
            name, body, functions.get(spec.get("hook")),
            f"arn:aws:iot:{region}:{account}:provisioningtemplate/{name}")
    api = provisioning.FleetProvisioning(iot, functions.get(config["certificate_provider"]), templates)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="api")
    bridge = broker.Bridge(iot, region, account, api, executor)

    def shutdown(signum, frame):
        for function in functions.values():
            function.close(exiting=True)
        try:
            if bridge.socket_inode is not None and os.stat(config["socket"]).st_ino == bridge.socket_inode:
                os.unlink(config["socket"])
        except FileNotFoundError:
            pass
        os._exit(0)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)

    def janitor():
        while True:
            time.sleep(30)
            api.expire_tokens()

    threading.Thread(target=janitor, name="token-janitor", daemon=True).start()
    threading.Thread(target=bridge.watch, name="certificate-watch", daemon=True).start()
    front = alpn.AlpnFront(config["alpn_port"], config["mqtt_port"], config["alpn_protocol"].encode())
    threading.Thread(target=front.serve, name="alpn-front", daemon=True).start()
    try:
        os.unlink(config["socket"])
    except FileNotFoundError:
        pass
    bridge.serve(config["socket"])


def wait(args):
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            if args.socket:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(args.socket)
            else:
                socket.create_connection(("127.0.0.1", args.port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"wait: {args.socket or args.port} did not answer within {args.timeout} s")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--local", required=True, help="the stack's .local directory")
    p.add_argument("--mqtt-port", type=int, required=True)
    p.add_argument("--alpn-port", type=int, required=True)
    p.add_argument("--plugin", required=True, help="the compiled broker plugin")
    p.add_argument("--template-name", required=True)
    p.add_argument("--template-body", required=True)
    p.add_argument("--provider", required=True, help="the certificate provider's bootstrap")
    p.add_argument("--hook", required=True, help="the pre-provisioning hook's bootstrap")
    p.add_argument("--device-policy", required=True, help="the policy the scripted allow hook names")
    p.add_argument("--env", action="append", help="FUNCTION:KEY=VALUE for cert-provider or provisioning-hook")
    s = sub.add_parser("serve")
    s.add_argument("--config", required=True)
    w = sub.add_parser("wait")
    w.add_argument("--socket")
    w.add_argument("--port", type=int)
    w.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args(argv)
    {"prepare": prepare, "serve": serve, "wait": wait}[args.command](args)


if __name__ == "__main__":
    main(sys.argv[1:])
