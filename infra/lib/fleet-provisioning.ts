import * as fs from 'node:fs';
import * as path from 'node:path';
import { ArnFormat, Duration, Stack } from 'aws-cdk-lib';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as iot from 'aws-cdk-lib/aws-iot';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';
import { ConfigError, type CpuArchitecture } from './config';
import { repoRoot } from './paths';
import { RustLambda } from './rust-lambda';

/** The provisioning template's body, relative to the repository root. */
export const TEMPLATE_BODY_FILE = path.join('infra', 'fleet-provisioning', 'template.json');

/** The MQTT topic of the fleet-provisioning CreateCertificateFromCsr API (JSON payloads). */
export const CREATE_FROM_CSR_TOPIC = '$aws/certificates/create-from-csr/json';
/** The MQTT topic of the fleet-provisioning RegisterThing API for a template (JSON payloads). */
export function registerThingTopic(templateName: string): string {
  return `$aws/provisioning-templates/${templateName}/provision/json`;
}

/** The pre-provisioning hook's payload version AWS IoT documents. */
export const HOOK_PAYLOAD_VERSION = '2020-04-01';

/**
 * The parameters the template takes and the hook fills in (parameterOverrides). The device
 * sends SerialNumber and EnrollmentToken; the hook decides ThingName, PolicyName and the
 * Attribute_<name> values from the enrollment record, never from the device.
 */
const REQUIRED_PARAMETERS: Record<string, { default?: string }> = {
  SerialNumber: {},
  EnrollmentToken: { default: '' },
  ThingName: {},
  PolicyName: {},
  'AWS::IoT::Certificate::Id': {},
};
const ATTRIBUTE_PARAMETER = /^Attribute_[A-Za-z0-9_.,@/:#-]{1,128}$/;

export class TemplateError extends ConfigError {
  constructor(message: string) {
    super(`${TEMPLATE_BODY_FILE}: ${message}`);
    this.name = 'TemplateError';
  }
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

function isObject(value: unknown): value is Record<string, Json> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function refsIn(value: unknown): string[] {
  if (Array.isArray(value)) return value.flatMap(refsIn);
  if (!isObject(value)) return [];
  const own = typeof value.Ref === 'string' ? [value.Ref] : [];
  return [...own, ...Object.values(value).flatMap(refsIn)];
}

/**
 * Checks a provisioning-template body against the contract the hook and the devices rely on:
 * the parameters above (with `Attribute_<name>` parameters defaulting to ""), a thing named by
 * ThingName, the certificate of the ownership token made ACTIVE, and an existing policy
 * attached by PolicyName (no policy document: the template never creates a policy from
 * device-supplied values). Every Ref names a declared parameter. Returns the body.
 */
export function checkTemplateBody(body: unknown): Record<string, Json> {
  if (!isObject(body)) throw new TemplateError('must hold one JSON object');
  const parameters = body.Parameters;
  if (!isObject(parameters)) throw new TemplateError('has no "Parameters" object');
  for (const [name, expected] of Object.entries(REQUIRED_PARAMETERS)) {
    const declared = parameters[name];
    if (!isObject(declared) || declared.Type !== 'String') {
      throw new TemplateError(`parameter "${name}" must be declared with "Type": "String"`);
    }
    if (declared.Default !== expected.default) {
      throw new TemplateError(
        expected.default === undefined
          ? `parameter "${name}" must have no default`
          : `parameter "${name}" must default to ${JSON.stringify(expected.default)}`,
      );
    }
  }
  for (const [name, declared] of Object.entries(parameters)) {
    if (name in REQUIRED_PARAMETERS) continue;
    if (!ATTRIBUTE_PARAMETER.test(name)) {
      throw new TemplateError(`parameter "${name}" is not part of the contract (Attribute_<name> for thing attributes)`);
    }
    if (!isObject(declared) || declared.Type !== 'String' || declared.Default !== '') {
      throw new TemplateError(`attribute parameter "${name}" must be a String defaulting to ""`);
    }
  }

  const resources = body.Resources;
  if (!isObject(resources)) throw new TemplateError('has no "Resources" object');
  const byType = (type: string) => Object.values(resources).filter((r) => isObject(r) && r.Type === type) as Record<string, Json>[];
  const unknown = Object.entries(resources).filter(
    ([, r]) => !isObject(r) || !['AWS::IoT::Thing', 'AWS::IoT::Certificate', 'AWS::IoT::Policy'].includes(String(r.Type)),
  );
  if (unknown.length > 0) throw new TemplateError(`unexpected resources: ${unknown.map(([k]) => k).join(', ')}`);
  const [thing, certificate, policy] = ['AWS::IoT::Thing', 'AWS::IoT::Certificate', 'AWS::IoT::Policy'].map((type) => {
    const found = byType(type);
    if (found.length !== 1) throw new TemplateError(`must hold exactly one ${type}`);
    return isObject(found[0].Properties) ? found[0].Properties : {};
  });
  if (JSON.stringify(thing.ThingName) !== JSON.stringify({ Ref: 'ThingName' })) {
    throw new TemplateError('the thing must be named { "Ref": "ThingName" }');
  }
  if (
    JSON.stringify(certificate.CertificateId) !== JSON.stringify({ Ref: 'AWS::IoT::Certificate::Id' }) ||
    certificate.Status !== 'ACTIVE'
  ) {
    throw new TemplateError('the certificate must be { "Ref": "AWS::IoT::Certificate::Id" } with "Status": "ACTIVE"');
  }
  if (JSON.stringify(policy.PolicyName) !== JSON.stringify({ Ref: 'PolicyName' }) || 'PolicyDocument' in policy) {
    throw new TemplateError('the policy must be an existing one, { "Ref": "PolicyName" }, without a PolicyDocument');
  }
  for (const ref of refsIn(resources)) {
    if (!(ref in parameters)) throw new TemplateError(`{ "Ref": "${ref}" } names no declared parameter`);
  }
  return body;
}

/** The committed template body, checked. */
export function readTemplateBody(file: string = path.join(repoRoot(), TEMPLATE_BODY_FILE)): Record<string, Json> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (error) {
    throw new TemplateError(`cannot be read as JSON: ${(error as Error).message}`);
  }
  return checkTemplateBody(parsed);
}

export interface FleetProvisioningProps {
  readonly hookManifestPath: string;
  readonly buildPackages: readonly string[];
  readonly stage: string;
  readonly templateName: string;
  readonly claimPolicyName: string;
  readonly claimClientIdPrefix?: string;
  readonly table: dynamodb.ITable;
  readonly defaultPolicyName: string;
  readonly lockoutFreeAttempts: number;
  readonly lockoutMaxSeconds: number;
  readonly architecture: CpuArchitecture;
  readonly reservedConcurrency?: number;
  readonly logRetention: logs.RetentionDays;
}

/**
 * Fleet provisioning by claim: a device holding the shared claim certificate gets its own
 * certificate over MQTT (CreateCertificateFromCsr, signed by AWS IoT's CA or, when the account
 * has one, by the certificate provider), then calls RegisterThing with this template. AWS IoT
 * asks the pre-provisioning hook first; the hook checks the serial and one-time token against
 * the same device table as the vend API and names the thing and policy. AWS IoT then creates
 * what the template says with the provisioning role.
 */
export class FleetProvisioning extends Construct {
  readonly hook: RustLambda;
  readonly template: iot.CfnProvisioningTemplate;
  readonly provisioningRole: iam.Role;
  readonly claimPolicy: iot.CfnPolicy;
  readonly templateArn: string;

  constructor(scope: Construct, id: string, props: FleetProvisioningProps) {
    super(scope, id);
    const stack = Stack.of(this);
    const iotArn = (resource: string, resourceName: string) =>
      stack.formatArn({ service: 'iot', resource, resourceName, arnFormat: ArnFormat.SLASH_RESOURCE_NAME });
    // Built from the name: the template refers to the hook and its permission, so the
    // permission cannot refer to the template's own attribute.
    this.templateArn = iotArn('provisioningtemplate', props.templateName);
    const body = readTemplateBody();

    this.hook = new RustLambda(this, 'Hook', {
      manifestPath: props.hookManifestPath,
      buildPackages: props.buildPackages,
      stage: props.stage,
      binaryName: 'provisioning-hook',
      description: 'Fleet-provisioning pre-provisioning hook: checks serial and one-time token, names thing and policy',
      architecture: props.architecture,
      memorySize: 256,
      // AWS IoT waits 5 s for the hook's answer.
      timeout: Duration.seconds(5),
      reservedConcurrency: props.reservedConcurrency,
      environment: {
        CVM_TABLE_NAME: props.table.tableName,
        CVM_DEFAULT_POLICY_NAME: props.defaultPolicyName,
        CVM_LOCKOUT_FREE_ATTEMPTS: String(props.lockoutFreeAttempts),
        CVM_LOCKOUT_MAX_SECONDS: String(props.lockoutMaxSeconds),
      },
      logRetention: props.logRetention,
    });
    const hookFn = this.hook.function;
    hookFn.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'ReadWriteDeviceRecords',
        actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'],
        resources: [props.table.tableArn],
      }),
    );
    // A device provisioned again (its record re-enrolled) replaces its certificate: the hook
    // reads the one the record names and deactivates it.
    hookFn.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'DeactivateReplacedCertificates',
        actions: ['iot:DescribeCertificate', 'iot:UpdateCertificate'],
        resources: [iotArn('cert', '*')],
      }),
    );

    // Only AWS IoT, for this account's template, may invoke the hook (confused-deputy
    // protection: SourceArn and SourceAccount).
    const invokePermission = new lambda.CfnPermission(this, 'InvokeByIot', {
      action: 'lambda:InvokeFunction',
      functionName: hookFn.functionArn,
      principal: 'iot.amazonaws.com',
      sourceArn: this.templateArn,
      sourceAccount: stack.account,
    });

    // What AWS IoT does with this role is exactly what the template says, and nothing else:
    // find or create the thing and set its attributes, activate the certificate of the
    // ownership token, attach the existing policy and the thing to it. Instead of the broad
    // AWSIoTThingsRegistration managed policy (thing groups, billing groups, policy creation,
    // on "*"), only those calls, on this account's things, certificates and policies.
    // Trusted by AWS IoT for this account only (SourceAccount, SourceArn as AWS documents).
    this.provisioningRole = new iam.Role(this, 'ProvisioningRole', {
      description: `Used by AWS IoT to provision devices with the ${props.templateName} template`,
      assumedBy: new iam.ServicePrincipal('iot.amazonaws.com').withConditions({
        StringEquals: { 'aws:SourceAccount': stack.account },
        ArnLike: {
          'aws:SourceArn': stack.formatArn({ service: 'iot', resource: '*', arnFormat: ArnFormat.NO_RESOURCE_NAME }),
        },
      }),
    });
    this.provisioningRole.addToPolicy(
      new iam.PolicyStatement({
        sid: 'ProvisionThings',
        actions: ['iot:CreateThing', 'iot:DescribeThing', 'iot:UpdateThing'],
        resources: [iotArn('thing', '*')],
      }),
    );
    // AttachPolicy, AttachPrincipalPolicy (the older name AWS IoT still authorizes) and
    // AttachThingPrincipal are authorized against the certificate, not the policy or thing.
    this.provisioningRole.addToPolicy(
      new iam.PolicyStatement({
        sid: 'ActivateAndAttachCertificates',
        actions: [
          'iot:DescribeCertificate',
          'iot:UpdateCertificate',
          'iot:AttachPolicy',
          'iot:AttachPrincipalPolicy',
          'iot:AttachThingPrincipal',
        ],
        resources: [iotArn('cert', '*')],
      }),
    );
    this.provisioningRole.addToPolicy(
      new iam.PolicyStatement({
        sid: 'ReadPolicies',
        actions: ['iot:GetPolicy'],
        resources: [iotArn('policy', '*')],
      }),
    );

    this.template = new iot.CfnProvisioningTemplate(this, 'Template', {
      templateName: props.templateName,
      description: 'Certificate Vending Machine: fleet provisioning by claim, checked by the pre-provisioning hook',
      templateType: 'FLEET_PROVISIONING',
      enabled: true,
      provisioningRoleArn: this.provisioningRole.roleArn,
      templateBody: JSON.stringify(body),
      preProvisioningHook: { targetArn: hookFn.functionArn, payloadVersion: HOOK_PAYLOAD_VERSION },
    });
    // AWS IoT must be allowed to invoke the hook, and the role must hold its policy, before
    // the template accepts devices.
    this.template.node.addDependency(invokePermission);
    this.template.node.addDependency(this.provisioningRole);

    // What a claim certificate may do: connect, and use the two fleet-provisioning MQTT APIs
    // of this template (request topics to publish, accepted/rejected to subscribe and
    // receive). Nothing else: not the device topics, not the shadow, not other templates.
    const topic = (name: string) => iotArn('topic', name);
    const topicFilter = (name: string) => iotArn('topicfilter', name);
    const requests = [CREATE_FROM_CSR_TOPIC, registerThingTopic(props.templateName)];
    const responses = requests.flatMap((request) => [`${request}/accepted`, `${request}/rejected`]);
    this.claimPolicy = new iot.CfnPolicy(this, 'ClaimPolicy', {
      policyName: props.claimPolicyName,
      policyDocument: {
        Version: '2012-10-17',
        Statement: [
          {
            Sid: 'ConnectWithClaim',
            Effect: 'Allow',
            Action: 'iot:Connect',
            Resource: iotArn('client', props.claimClientIdPrefix ? `${props.claimClientIdPrefix}*` : '*'),
          },
          {
            Sid: 'RequestProvisioning',
            Effect: 'Allow',
            Action: 'iot:Publish',
            Resource: requests.map(topic),
          },
          {
            Sid: 'SubscribeToProvisioningResponses',
            Effect: 'Allow',
            Action: 'iot:Subscribe',
            Resource: responses.map(topicFilter),
          },
          {
            Sid: 'ReceiveProvisioningResponses',
            Effect: 'Allow',
            Action: 'iot:Receive',
            Resource: responses.map(topic),
          },
        ],
      },
    });
  }
}
