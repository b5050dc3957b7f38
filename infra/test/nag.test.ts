import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { App, Aspects, Stack } from 'aws-cdk-lib';
import { Annotations, Match } from 'aws-cdk-lib/assertions';
import * as iam from 'aws-cdk-lib/aws-iam';
import { AwsSolutionsChecks } from 'cdk-nag';
import { CONFIGS, nagFindings, synth } from './helpers';

/** cdk-nag writes acknowledgements into resource metadata; collect them with their resources. */
function acknowledgements(context: Record<string, unknown>) {
  const resources = synth(context).template.toJSON().Resources as Record<string, { Metadata?: any }>;
  return Object.entries(resources).flatMap(([id, r]) =>
    (r.Metadata?.cdk_nag?.rules_to_suppress ?? []).map((s: { id: string; reason: string; applies_to?: string[] }) => ({
      resource: id,
      ...s,
    })),
  );
}

describe('AWS Solutions checks (cdk-nag)', () => {
  const everything = {
    issuerMode: 'acm-pca',
    createPrivateCa: 'true',
    crl: 'true',
    pcaRegisteredWithIot: 'true',
    certificateProvider: 'true',
    fleetProvisioning: 'true',
    deviceDefenderAudit: 'true',
    ...CONFIGS.customDomain,
    alarmTopicArn: 'arn:aws:sns:eu-west-1:123456789012:cvm-ops',
    deviceRoleManagedPolicyArns: 'arn:aws:iam::aws:policy/AWSIoTDataAccess',
  };

  for (const [name, context] of Object.entries({ ...CONFIGS, everything })) {
    it(`${name}: no unacknowledged error or warning`, () => {
      assert.deepEqual(nagFindings(synth(context).stack), []);
    });
  }

  it('acknowledges each finding with a specific reason', () => {
    for (const context of [CONFIGS.default, everything]) {
      const acks = acknowledgements(context);
      assert.ok(acks.length > 0);
      for (const ack of acks) {
        assert.ok(ack.reason.length >= 120, `reason of ${ack.id} on ${ack.resource} is too short: ${ack.reason}`);
      }
    }
  });

  it('acknowledges wildcards only for the vend role, resource by resource', () => {
    const wildcards = acknowledgements(CONFIGS.default).filter((a) => a.id === 'AwsSolutions-IAM5');
    assert.deepEqual(
      wildcards.map((a) => a.applies_to),
      [
        ['Resource::*'],
        ['Resource::arn:<AWS::Partition>:iot:<AWS::Region>:<AWS::AccountId>:cert/*'],
        ['Resource::arn:<AWS::Partition>:iot:<AWS::Region>:<AWS::AccountId>:thing/*'],
      ],
    );
    assert.ok(wildcards.every((a) => a.resource.startsWith('VendRoleDefaultPolicy')));
  });

  it('acknowledges the fleet-provisioning wildcards on the hook and the provisioning role, resource by resource', () => {
    const wildcards = acknowledgements(CONFIGS.fleet).filter((a) => a.id === 'AwsSolutions-IAM5');
    const on = (prefix: string) =>
      wildcards.filter((a) => a.resource.startsWith(prefix)).map((a) => a.applies_to?.[0].replace(/^.*:/, ''));
    assert.deepEqual(on('FleetProvisioningHookRoleDefaultPolicy'), ['cert/*']);
    assert.deepEqual(on('FleetProvisioningProvisioningRoleDefaultPolicy'), ['thing/*', 'cert/*', 'policy/*']);
    assert.equal(wildcards.length, 3 + 1 + 3, 'vend, hook and provisioning role, nothing else');
  });

  it('acknowledges the audit role\'s managed policy by name only', () => {
    const managed = acknowledgements(CONFIGS.audit).filter((a) => a.id === 'AwsSolutions-IAM4');
    assert.deepEqual(
      managed.map((a) => a.applies_to),
      [['Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSIoTDeviceDefenderAudit']],
    );
  });

  it('names the actual "*" actions in the reason of each configuration', () => {
    const star = (context: Record<string, unknown>) =>
      acknowledgements(context).find((a) => a.applies_to?.[0] === 'Resource::*')?.reason ?? '';
    assert.match(star(CONFIGS.default), /iot:CreateCertificateFromCsr and iot:DescribeEndpoint/);
    assert.match(star(CONFIGS.acmPca), /iot:RegisterCertificateWithoutCA and iot:DescribeEndpoint/);
    assert.match(star({ ...CONFIGS.acmPca, pcaRegisteredWithIot: 'true' }), /Only iot:RegisterCertificate and/);
    assert.match(star(CONFIGS.endpointsGiven), /iot:CreateCertificateFromCsr and iot:DescribeEndpoint/);
  });

  it('reports what it is not told to accept (the harness can fail)', () => {
    const app = new App();
    const stack = new Stack(app, 'NagControl');
    const role = new iam.Role(stack, 'Role', { assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com') });
    role.addToPolicy(new iam.PolicyStatement({ actions: ['iot:CreateThing'], resources: ['*'] }));
    role.addManagedPolicy(iam.ManagedPolicy.fromAwsManagedPolicyName('AWSIoTFullAccess'));
    Aspects.of(app).add(new AwsSolutionsChecks());
    const errors = Annotations.fromStack(stack).findError('*', Match.stringLikeRegexp('AwsSolutions-.*'));
    const ids = errors.map((e) => String(e.entry.data).split(':')[0]);
    assert.ok(ids.some((id) => id.startsWith('AwsSolutions-IAM5')), ids.join(', '));
    assert.ok(ids.some((id) => id.startsWith('AwsSolutions-IAM4')), ids.join(', '));
  });
});
