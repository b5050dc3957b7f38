import { NagSuppressions } from 'cdk-nag';
import type { IConstruct } from 'constructs';
import type { CvmConfig } from './config';
import type { CvmStack } from './cvm-stack';

/**
 * The AWS Solutions (cdk-nag) findings this design accepts, each with the reason it is
 * accepted. Every acknowledgement names the exact finding (rule and, for wildcard rules,
 * the exact resource), so any new wildcard or managed policy is still reported.
 *
 * The tests assert that the synthesized stack has no unacknowledged finding in any
 * configuration, and which actions may use the acknowledged wildcards.
 */
export function acknowledgeFindings(stack: CvmStack, config: CvmConfig): void {
  const vendPolicy = stack.vend.role.node.findChild('DefaultPolicy');
  const issueAction =
    config.issuerMode === 'iot'
      ? 'iot:CreateCertificateFromCsr'
      : config.pcaRegisteredWithIot
        ? 'iot:RegisterCertificate'
        : 'iot:RegisterCertificateWithoutCA';
  const starActions = [issueAction, ...(config.iotDataEndpoint ? [] : ['iot:DescribeEndpoint'])];
  acknowledge(vendPolicy, [
    {
      id: 'AwsSolutions-IAM5',
      appliesTo: ['Resource::*'],
      reason:
        `Only ${starActions.join(' and ')} use Resource "*": the Service Authorization Reference for AWS IoT lists ` +
        'no resource type for these actions, so "*" is the only resource they can be granted on. ' +
        'Certificate issuance in this mode needs the first; the endpoint lookup happens only when the endpoints are not configured.',
    },
    {
      id: 'AwsSolutions-IAM5',
      appliesTo: ['Resource::arn:<AWS::Partition>:iot:<AWS::Region>:<AWS::AccountId>:cert/*'],
      reason:
        'Certificates are created by the function at run time, so their IDs are unknown at deploy time. ' +
        'cert/* is limited to this account and region; it covers activating, reading, deactivating and deleting ' +
        'vended certificates and attaching/detaching policy and thing, which AWS authorizes against the certificate.',
    },
    {
      id: 'AwsSolutions-IAM5',
      appliesTo: ['Resource::arn:<AWS::Partition>:iot:<AWS::Region>:<AWS::AccountId>:thing/*'],
      reason:
        'Things are created per device at vend time, named after enrollment records that are added after deployment; ' +
        'thing/* in this account and region is the narrowest ARN for iot:CreateThing, the only action granted on it.',
    },
  ]);

  acknowledge(stack.api.route, [
    {
      id: 'AwsSolutions-APIG4',
      reason:
        'The vending route is called by devices before they have any identity AWS could verify (no certificate, ' +
        'no IAM credentials, no token issuer). Its credential is the one-time enrollment token in the request body, ' +
        'checked by the function against a stored hash in constant time, with the serial locked after ' +
        `${config.maxFailedAttempts} wrong tokens; the stage throttles to ${config.throttleRateLimit} requests per second.`,
    },
  ]);

  if (config.deviceRoleManagedPolicyArns.length > 0) {
    acknowledge(stack.identity.deviceRole, [
      {
        id: 'AwsSolutions-IAM4',
        appliesTo: config.deviceRoleManagedPolicyArns.map((arn) => `Policy::${arn}`),
        reason:
          'The managed policies of the device role are chosen by the operator for this deployment ' +
          '(context deviceRoleManagedPolicyArns); by default the role has no permissions.',
      },
    ]);
  }
}

function acknowledge(construct: IConstruct, suppressions: { id: string; reason: string; appliesTo?: string[] }[]): void {
  NagSuppressions.addResourceSuppressions(construct, suppressions, true);
}
