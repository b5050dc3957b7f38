import { type Stack, Token } from 'aws-cdk-lib';
import { NagSuppressions } from 'cdk-nag';
import type { IConstruct } from 'constructs';
import type { CvmConfig } from './config';
import type { CvmStack } from './cvm-stack';
import { AUDIT_MANAGED_POLICY } from './device-defender';

/**
 * A wildcard resource of this account and region as cdk-nag names it in a finding: a stack
 * pinned to an account and region (a stage file that names them) has them written out, an
 * environment-agnostic one has CloudFormation references.
 */
function iotWildcard(stack: Stack, resource: string): string {
  const region = Token.isUnresolved(stack.region) ? '<AWS::Region>' : stack.region;
  const account = Token.isUnresolved(stack.account) ? '<AWS::AccountId>' : stack.account;
  return `Resource::arn:<AWS::Partition>:iot:${region}:${account}:${resource}`;
}

/**
 * The AWS Solutions (cdk-nag) findings this design accepts, each with the reason it is
 * accepted. Every acknowledgement names the exact finding (rule and, for wildcard rules,
 * the exact resource), so any new wildcard or managed policy is still reported.
 *
 * The tests assert that the synthesized stack has no unacknowledged finding in any
 * configuration, and which actions may use the acknowledged wildcards.
 */
export function acknowledgeFindings(stack: CvmStack, config: CvmConfig): void {
  const CERT_WILDCARD = iotWildcard(stack, 'cert/*');
  const THING_WILDCARD = iotWildcard(stack, 'thing/*');
  const POLICY_WILDCARD = iotWildcard(stack, 'policy/*');
  const vendPolicy = stack.vend.role.node.findChild('DefaultPolicy');
  const issueAction =
    config.issuerMode === 'iot'
      ? 'iot:CreateCertificateFromCsr'
      : config.pcaRegisteredWithIot
        ? 'iot:RegisterCertificate'
        : 'iot:RegisterCertificateWithoutCA';
  const starActions = [issueAction, 'iot:DescribeEndpoint'];
  acknowledge(vendPolicy, [
    {
      id: 'AwsSolutions-IAM5',
      appliesTo: ['Resource::*'],
      reason:
        `Only ${starActions.join(' and ')} use Resource "*": the Service Authorization Reference for AWS IoT lists ` +
        'no resource type for these actions, so "*" is the only resource they can be granted on. ' +
        'Certificate issuance in this mode needs the first; the second, read-only, looks the endpoints up or opens the connection at start-up.',
    },
    {
      id: 'AwsSolutions-IAM5',
      appliesTo: [CERT_WILDCARD],
      reason:
        'Certificates are created by the function at run time, so their IDs are unknown at deploy time. ' +
        'cert/* is limited to this account and region; it covers activating, reading, deactivating and deleting ' +
        'vended certificates, listing and attaching/detaching their policies and thing, which AWS authorizes against the certificate.',
    },
    {
      id: 'AwsSolutions-IAM5',
      appliesTo: [THING_WILDCARD],
      reason:
        'Things are created per device at vend time, named after enrollment records that are added after deployment; ' +
        'thing/* in this account and region is the narrowest ARN for iot:CreateThing, the only action granted on it.',
    },
  ]);

  const [vendRoute, renewalRoute, confirmRoute] = stack.api.routes;
  const noAuthorizer =
    'The route is called by devices that have no identity AWS could verify at the API (no IAM credentials, no ' +
    'token issuer; API Gateway HTTP APIs do not do mutual TLS with per-device certificates from an AWS IoT registry). ';
  acknowledge(vendRoute, [
    {
      id: 'AwsSolutions-APIG4',
      reason:
        noAuthorizer +
        'Its credential is the one-time enrollment token in the request body, checked by the function against a stored ' +
        `hash in constant time; after ${config.lockoutFreeAttempts} wrong tokens a backoff closes the serial for up to ` +
        `${config.lockoutMaxSeconds} s per attempt; the stage throttles to ${config.throttleRateLimit} requests per second.`,
    },
  ]);
  for (const route of [renewalRoute, confirmRoute]) {
    acknowledge(route, [
      {
        id: 'AwsSolutions-APIG4',
        reason:
          noAuthorizer +
          'A renewal is authorized by the function: the request is signed with the key of the device\'s current ' +
          'certificate (the confirmation with the new one), checked against the key the device record holds; ' +
          `the stage throttles to ${config.throttleRateLimit} requests per second.`,
      },
    ]);
  }

  if (config.deviceRoleManagedPolicyArns.length > 0) {
    acknowledge(stack.identity.deviceRole, [
      {
        id: 'AwsSolutions-IAM4',
        appliesTo: config.deviceRoleManagedPolicyArns.map((arn) => `Policy::${arn}`),
        reason:
          'The managed policies of the device role are chosen by the operator for this deployment ' +
          '(setting deviceRoleManagedPolicyArns); by default the role has no permissions.',
      },
    ]);
  }

  if (stack.fleet) {
    acknowledge(stack.fleet.hook.role.node.findChild('DefaultPolicy'), [
      {
        id: 'AwsSolutions-IAM5',
        appliesTo: [CERT_WILDCARD],
        reason:
          'The hook reads and deactivates the certificate a re-provisioned device replaces; its ID is in the device ' +
          'record, written at run time, so unknown at deploy time. cert/* in this account and region, for ' +
          'iot:DescribeCertificate and iot:UpdateCertificate only.',
      },
    ]);
    acknowledge(stack.fleet.provisioningRole.node.findChild('DefaultPolicy'), [
      {
        id: 'AwsSolutions-IAM5',
        appliesTo: [THING_WILDCARD],
        reason:
          'AWS IoT creates or updates the thing the pre-provisioning hook names from the device record, unknown at ' +
          'deploy time: thing/* in this account and region, for CreateThing, DescribeThing and UpdateThing only.',
      },
      {
        id: 'AwsSolutions-IAM5',
        appliesTo: [CERT_WILDCARD],
        reason:
          'AWS IoT activates the certificate it just issued from the device CSR and attaches the policy and thing to it; ' +
          'the ID exists only at provisioning time. cert/* in this account and region; AWS authorizes the attach calls ' +
          'against the certificate.',
      },
      {
        id: 'AwsSolutions-IAM5',
        appliesTo: [POLICY_WILDCARD],
        reason:
          'AWS IoT reads the policy the hook names (the deployment default or the one an operator put in the device ' +
          'record) before attaching it: policy/* in this account and region, iot:GetPolicy only, which reads and cannot change.',
      },
    ]);
  }

  if (stack.audit) {
    acknowledge(stack.audit.role, [
      {
        id: 'AwsSolutions-IAM4',
        appliesTo: [`Policy::arn:<AWS::Partition>:iam::aws:policy/${AUDIT_MANAGED_POLICY}`],
        reason:
          'AWSIoTDeviceDefenderAudit is the policy AWS documents for the audit role: read-only (List/Describe/Get) and ' +
          'maintained by AWS as checks evolve; which calls a check makes is not documented, so a hand-written subset ' +
          'could silently break the audit. Only AWS IoT of this account and region may assume the role.',
      },
    ]);
  }

  if (stack.crl) {
    acknowledge(stack.crl.bucket, [
      {
        id: 'AwsSolutions-S1',
        reason:
          'The bucket holds only the CA\'s certificate revocation list, a signed public document, written by AWS Private ' +
          'CA and read by CloudFront through origin access control; writes are in CloudTrail. Server access logs would ' +
          'record CloudFront fetching a public file.',
      },
      {
        id: 'AwsSolutions-S10',
        reason:
          'CRL distribution points are plain-HTTP URIs (RFC 5280; a CRL is signed and needs no transport security) and ' +
          'CloudFront reaches an S3 origin with the protocol the viewer used, so refusing non-TLS requests would break ' +
          'CRL fetches. Block Public Access is on: only CloudFront (origin access control) reads, only AWS Private CA writes.',
      },
    ]);
    acknowledge(stack.crl.distribution, [
      {
        id: 'AwsSolutions-CFR1',
        reason:
          'The CRL must be reachable wherever a party verifies device certificates; it is a signed public document, ' +
          'so restricting it by geography protects nothing.',
      },
      {
        id: 'AwsSolutions-CFR2',
        reason:
          'The distribution serves one small static signed file from a cache; there is no application behind it for a ' +
          'web application firewall to protect, and CloudFront absorbs volumetric load (AWS Shield Standard).',
      },
      {
        id: 'AwsSolutions-CFR3',
        reason:
          'Access logs would record who fetched a public signed CRL; there is nothing to audit in reads of public data, ' +
          'and changes to the CRL are made by AWS Private CA and recorded in CloudTrail.',
      },
      {
        id: 'AwsSolutions-CFR4',
        reason:
          'The distribution uses its cloudfront.net name, because that name is written into every certificate as the CRL ' +
          'distribution point; with the default certificate CloudFront cannot pin a minimum TLS version. CRL clients ' +
          'fetch over plain HTTP by design (RFC 5280); the CRL\'s own signature protects it.',
      },
    ]);
  }
}

function acknowledge(construct: IConstruct, suppressions: { id: string; reason: string; appliesTo?: string[] }[]): void {
  NagSuppressions.addResourceSuppressions(construct, suppressions, true);
}
