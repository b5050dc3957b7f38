import { ArnFormat, Duration, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as iot from 'aws-cdk-lib/aws-iot';
import { Construct } from 'constructs';

export interface DeviceIdentityProps {
  readonly policyName: string;
  readonly roleAliasName: string;
  readonly credentialDurationSeconds: number;
  readonly deviceRoleManagedPolicyArns: readonly string[];
}

/** The thing name of the connected client, as AWS IoT resolves it in policies. */
const THING_NAME = '${iot:Connection.Thing.ThingName}';

/**
 * What a vended certificate is allowed to do: the default AWS IoT policy attached to
 * every certificate, and the role alias through which a device exchanges its
 * certificate for short-lived AWS credentials.
 */
export class DeviceIdentity extends Construct {
  readonly policy: iot.CfnPolicy;
  readonly roleAlias: iot.CfnRoleAlias;
  readonly deviceRole: iam.Role;

  constructor(scope: Construct, id: string, props: DeviceIdentityProps) {
    super(scope, id);
    const stack = Stack.of(this);
    const iotArn = (resource: string, resourceName: string) =>
      stack.formatArn({ service: 'iot', resource, resourceName, arnFormat: ArnFormat.SLASH_RESOURCE_NAME });

    // The role behind the role alias. It trusts only the AWS IoT credentials provider, and
    // only on behalf of this account's role alias (confused-deputy protection: SourceAccount
    // and SourceArn, as AWS documents for credentials.iot.amazonaws.com; the ARN is built from
    // the alias name because the alias itself refers to this role). It has no permissions
    // unless the operator names managed policies for it: a device gets exactly the AWS access
    // the fleet needs, granted deliberately.
    const roleAliasArn = iotArn('rolealias', props.roleAliasName);
    this.deviceRole = new iam.Role(this, 'DeviceRole', {
      assumedBy: new iam.ServicePrincipal('credentials.iot.amazonaws.com').withConditions({
        StringEquals: { 'aws:SourceAccount': stack.account },
        ArnEquals: { 'aws:SourceArn': roleAliasArn },
      }),
      description: 'Assumed by the AWS IoT credentials provider for devices holding a vended certificate',
      managedPolicies: props.deviceRoleManagedPolicyArns.map((arn, i) =>
        iam.ManagedPolicy.fromManagedPolicyArn(this, `DevicePolicy${i}`, arn),
      ),
      // The role alias cannot hand out credentials that outlive the role's session limit.
      maxSessionDuration: Duration.seconds(Math.max(3600, props.credentialDurationSeconds)),
    });

    this.roleAlias = new iot.CfnRoleAlias(this, 'RoleAlias', {
      roleAlias: props.roleAliasName,
      roleArn: this.deviceRole.roleArn,
      credentialDurationSeconds: props.credentialDurationSeconds,
    });

    // Least privilege through policy variables: a certificate can connect only with the
    // client ID of the thing it is attached to, and publish, receive and subscribe only
    // under that thing's own topic tree. It works for any number of devices without one
    // policy per device. Devices that use shadows, jobs or other topics get further
    // policies through the enrollment record (extraPolicyNames).
    this.policy = new iot.CfnPolicy(this, 'DevicePolicy', {
      policyName: props.policyName,
      policyDocument: {
        Version: '2012-10-17',
        Statement: [
          {
            Sid: 'ConnectAsOwnThing',
            Effect: 'Allow',
            Action: 'iot:Connect',
            Resource: iotArn('client', THING_NAME),
            // Only a certificate attached to the thing of that name may connect.
            Condition: { Bool: { 'iot:Connection.Thing.IsAttached': 'true' } },
          },
          {
            Sid: 'MessagesOnOwnTopics',
            Effect: 'Allow',
            Action: ['iot:Publish', 'iot:Receive'],
            Resource: iotArn('topic', `things/${THING_NAME}/*`),
          },
          {
            Sid: 'SubscribeToOwnTopics',
            Effect: 'Allow',
            Action: 'iot:Subscribe',
            Resource: iotArn('topicfilter', `things/${THING_NAME}/*`),
          },
          {
            Sid: 'ExchangeCertificateForCredentials',
            Effect: 'Allow',
            Action: 'iot:AssumeRoleWithCertificate',
            Resource: this.roleAlias.attrRoleAliasArn,
          },
        ],
      },
    });
  }
}
