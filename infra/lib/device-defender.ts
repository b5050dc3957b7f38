import { ArnFormat, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as iot from 'aws-cdk-lib/aws-iot';
import { Construct } from 'constructs';

export interface CertificateExpiryAuditProps {
  readonly stage: string;
  /** Audit results are sent there when given. */
  readonly notificationTopicArn?: string;
}

/** The managed policy AWS documents for the role Device Defender audits with (read-only). */
export const AUDIT_MANAGED_POLICY = 'service-role/AWSIoTDeviceDefenderAudit';
export const EXPIRY_CHECK = 'DEVICE_CERTIFICATE_EXPIRING_CHECK';

/**
 * An AWS IoT Device Defender audit that lists, every day, the device certificates that are
 * ACTIVE and expire within 30 days (or have expired): devices whose renewal did not happen.
 *
 * The audit configuration is an account-level setting (one per account and region, and
 * deleting the resource turns the account's audit checks off), so only the stage that owns
 * the account's singletons may create it (lib/stages.ts). It enables this one check; an
 * account that audits more should manage its audit configuration in one place and leave this
 * setting off.
 */
export class CertificateExpiryAudit extends Construct {
  readonly role: iam.Role;
  readonly configuration: iot.CfnAccountAuditConfiguration;
  readonly schedule: iot.CfnScheduledAudit;

  constructor(scope: Construct, id: string, props: CertificateExpiryAuditProps) {
    super(scope, id);
    const stack = Stack.of(this);

    // Assumed by AWS IoT for this account's audits only (confused-deputy protection as AWS
    // documents for Device Defender: SourceAccount, and SourceArn within this account's AWS
    // IoT in this region).
    this.role = new iam.Role(this, 'Role', {
      description: 'Assumed by AWS IoT Device Defender to audit device certificates',
      assumedBy: new iam.ServicePrincipal('iot.amazonaws.com').withConditions({
        StringEquals: { 'aws:SourceAccount': stack.account },
        ArnLike: {
          'aws:SourceArn': stack.formatArn({ service: 'iot', resource: '*', arnFormat: ArnFormat.NO_RESOURCE_NAME }),
        },
      }),
      managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName(AUDIT_MANAGED_POLICY)],
    });
    if (props.notificationTopicArn) {
      this.role.addToPolicy(
        new iam.PolicyStatement({
          sid: 'PublishAuditResults',
          actions: ['sns:Publish'],
          resources: [props.notificationTopicArn],
        }),
      );
    }

    this.configuration = new iot.CfnAccountAuditConfiguration(this, 'Configuration', {
      accountId: stack.account,
      roleArn: this.role.roleArn,
      auditCheckConfigurations: { deviceCertificateExpiringCheck: { enabled: true } },
      auditNotificationTargetConfigurations: props.notificationTopicArn
        ? { sns: { enabled: true, roleArn: this.role.roleArn, targetArn: props.notificationTopicArn } }
        : undefined,
    });
    // The policy must be in place before AWS IoT checks the role.
    this.configuration.node.addDependency(this.role);

    this.schedule = new iot.CfnScheduledAudit(this, 'Daily', {
      scheduledAuditName: `cvm-${props.stage}-device-certificate-expiry`,
      frequency: 'DAILY',
      targetCheckNames: [EXPIRY_CHECK],
    });
    // A scheduled audit may only name checks the account's configuration enables.
    this.schedule.node.addDependency(this.configuration);
  }
}
