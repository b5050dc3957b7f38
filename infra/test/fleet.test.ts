import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { checkTemplateBody, TEMPLATE_BODY_FILE, TemplateError } from '../lib/fleet-provisioning';
import { repoRoot } from '../lib/paths';
import { ARN, CONFIGS, flatten, onlyLogicalId, synth, TEST_STAGE } from './helpers';

const committedBody = () => JSON.parse(fs.readFileSync(path.join(repoRoot(), TEMPLATE_BODY_FILE), 'utf8'));

describe('fleetProvisioning=true', () => {
  const { template } = synth(CONFIGS.fleet);
  const hook = onlyLogicalId(template, 'AWS::Lambda::Function', 'FleetProvisioningHookFunction');
  const table = onlyLogicalId(template, 'AWS::DynamoDB::Table');

  it('creates an enabled fleet-provisioning template with the committed body and the hook', () => {
    const resource = template.toJSON().Resources[onlyLogicalId(template, 'AWS::IoT::ProvisioningTemplate')];
    const props = resource.Properties;
    assert.equal(props.TemplateName, 'cvm-fleet-provisioning');
    assert.equal(props.TemplateType, 'FLEET_PROVISIONING');
    assert.equal(props.Enabled, true);
    assert.deepEqual(JSON.parse(props.TemplateBody), committedBody());
    assert.deepEqual(props.PreProvisioningHook, { TargetArn: { 'Fn::GetAtt': [hook, 'Arn'] }, PayloadVersion: '2020-04-01' });
    const role = onlyLogicalId(template, 'AWS::IAM::Role', 'FleetProvisioningProvisioningRole');
    assert.deepEqual(props.ProvisioningRoleArn, { 'Fn::GetAtt': [role, 'Arn'] });
  });

  it('creates the template after AWS IoT may invoke the hook, the role holds its policy, and the device policy exists', () => {
    const permission = Object.keys(
      template.findResources('AWS::Lambda::Permission', { Properties: { FunctionName: { 'Fn::GetAtt': [hook, 'Arn'] } } }),
    );
    const rolePolicy = onlyLogicalId(template, 'AWS::IAM::Policy', 'FleetProvisioningProvisioningRoleDefaultPolicy');
    const devicePolicy = onlyLogicalId(template, 'AWS::IoT::Policy', 'DeviceIdentityDevicePolicy');
    const dependsOn: string[] = template.toJSON().Resources[onlyLogicalId(template, 'AWS::IoT::ProvisioningTemplate')].DependsOn;
    for (const needed of [permission[0], rolePolicy, devicePolicy]) {
      assert.ok(dependsOn.includes(needed), `the template does not wait for ${needed}`);
    }
  });

  it('runs the hook as a Rust function: 256 MB, 5 s, its own log group, reserved concurrency', () => {
    const props = template.toJSON().Resources[hook].Properties;
    const logGroup = onlyLogicalId(template, 'AWS::Logs::LogGroup', 'FleetProvisioningHookLogGroup');
    assert.equal(props.Runtime, 'provided.al2023');
    assert.equal(props.Handler, 'bootstrap');
    assert.equal(props.MemorySize, 256);
    assert.equal(props.Timeout, 5);
    assert.equal(props.ReservedConcurrentExecutions, 10);
    assert.deepEqual(props.LoggingConfig, {
      LogFormat: 'JSON',
      ApplicationLogLevel: 'INFO',
      SystemLogLevel: 'INFO',
      LogGroup: { Ref: logGroup },
    });
  });

  it('gives the hook exactly the environment it reads', () => {
    const env = template.toJSON().Resources[hook].Properties.Environment.Variables;
    assert.deepEqual(env, {
      CVM_TABLE_NAME: { Ref: table },
      CVM_DEFAULT_POLICY_NAME: 'cvm-device-default',
      CVM_LOCKOUT_FREE_ATTEMPTS: '5',
      CVM_LOCKOUT_MAX_SECONDS: '900',
      CVM_STAGE: TEST_STAGE,
    });
  });

  it('lets a claim certificate connect and use the two provisioning APIs of this template, nothing else', () => {
    const policies = Object.values(template.findResources('AWS::IoT::Policy', { Properties: { PolicyName: 'cvm-claim' } }));
    assert.equal(policies.length, 1);
    const statements = policies[0].Properties.PolicyDocument.Statement.map((st: any) => ({
      ...st,
      Resource: Array.isArray(st.Resource) ? st.Resource.map(flatten) : flatten(st.Resource),
    }));
    const csr = '$aws/certificates/create-from-csr/json';
    const provision = '$aws/provisioning-templates/cvm-fleet-provisioning/provision/json';
    const responses = [`${csr}/accepted`, `${csr}/rejected`, `${provision}/accepted`, `${provision}/rejected`];
    assert.deepEqual(statements, [
      { Sid: 'ConnectWithClaim', Effect: 'Allow', Action: 'iot:Connect', Resource: ARN.iot('client/claim-*') },
      { Sid: 'RequestProvisioning', Effect: 'Allow', Action: 'iot:Publish', Resource: [ARN.iot(`topic/${csr}`), ARN.iot(`topic/${provision}`)] },
      {
        Sid: 'SubscribeToProvisioningResponses',
        Effect: 'Allow',
        Action: 'iot:Subscribe',
        Resource: responses.map((t) => ARN.iot(`topicfilter/${t}`)),
      },
      { Sid: 'ReceiveProvisioningResponses', Effect: 'Allow', Action: 'iot:Receive', Resource: responses.map((t) => ARN.iot(`topic/${t}`)) },
    ]);
  });

  it('restricts claim connections to another client-ID prefix when one is set', () => {
    const t = synth({ ...CONFIGS.fleet, claimClientIdPrefix: 'factory7-' }).template;
    const [policy] = Object.values(t.findResources('AWS::IoT::Policy', { Properties: { PolicyName: 'cvm-claim' } }));
    assert.equal(flatten(policy.Properties.PolicyDocument.Statement[0].Resource), ARN.iot('client/factory7-*'));
  });

  it('follows the template and claim policy names, in topics and the invoke permission', () => {
    const t = synth({ ...CONFIGS.fleet, provisioningTemplateName: 'line-b', claimPolicyName: 'claim-b' }).template;
    t.hasResourceProperties('AWS::IoT::ProvisioningTemplate', { TemplateName: 'line-b' });
    const [policy] = Object.values(t.findResources('AWS::IoT::Policy', { Properties: { PolicyName: 'claim-b' } }));
    assert.match(JSON.stringify(policy.Properties.PolicyDocument), /provisioning-templates\/line-b\/provision\/json/);
    const hookFn = onlyLogicalId(t, 'AWS::Lambda::Function', 'FleetProvisioningHookFunction');
    const [permission] = Object.values(
      t.findResources('AWS::Lambda::Permission', { Properties: { FunctionName: { 'Fn::GetAtt': [hookFn, 'Arn'] } } }),
    );
    assert.equal(flatten(permission.Properties.SourceArn), ARN.iot('provisioningtemplate/line-b'));
  });

  it('outputs the template and claim policy names', () => {
    template.hasOutput('ProvisioningTemplateName', { Value: 'cvm-fleet-provisioning' });
    template.hasOutput('ClaimPolicyName', { Value: 'cvm-claim' });
  });

  it('is independent of the certificate provider, and off by default', () => {
    template.resourceCountIs('AWS::IoT::CertificateProvider', 0);
    const both = synth({ ...CONFIGS.fleet, ...CONFIGS.provider }).template;
    both.resourceCountIs('AWS::IoT::CertificateProvider', 1);
    both.resourceCountIs('AWS::IoT::ProvisioningTemplate', 1);
    const plain = synth(CONFIGS.default).template;
    plain.resourceCountIs('AWS::IoT::ProvisioningTemplate', 0);
    assert.equal(Object.keys(plain.findResources('AWS::IoT::Policy')).length, 1, 'only the device policy');
    assert.equal(plain.toJSON().Outputs.ProvisioningTemplateName, undefined);
  });
});

describe('provisioning template body', () => {
  const mutate = (change: (body: any) => void) => {
    const body = committedBody();
    change(body);
    return () => checkTemplateBody(body);
  };
  const refuses = (fn: () => unknown, message: RegExp) =>
    assert.throws(fn, (error: unknown) => error instanceof TemplateError && message.test(error.message));

  it('accepts the committed body', () => {
    assert.deepEqual(checkTemplateBody(committedBody()), committedBody());
  });

  it('refuses a body that breaks the parameter contract', () => {
    refuses(mutate((b) => delete b.Parameters.SerialNumber), /"SerialNumber" must be declared/);
    refuses(mutate((b) => delete b.Parameters.EnrollmentToken.Default), /"EnrollmentToken" must default to ""/);
    refuses(mutate((b) => (b.Parameters.ThingName.Default = 'thing')), /"ThingName" must have no default/);
    refuses(mutate((b) => (b.Parameters['AWS::IoT::Certificate::Id'].Type = 'Number')), /Certificate::Id/);
    refuses(mutate((b) => (b.Parameters.Attribute_site.Default = 'x')), /"Attribute_site" must be a String defaulting to ""/);
    refuses(mutate((b) => (b.Parameters.Secret = { Type: 'String' })), /"Secret" is not part of the contract/);
  });

  it('refuses resources other than the thing, the activated certificate and an existing policy by name', () => {
    refuses(mutate((b) => (b.Resources.thing.Properties.ThingName = { Ref: 'SerialNumber' })), /thing must be named/);
    refuses(mutate((b) => (b.Resources.certificate.Properties.Status = 'INACTIVE')), /ACTIVE/);
    refuses(
      mutate((b) => (b.Resources.policy.Properties.PolicyDocument = '{"Statement":[]}')),
      /existing one.*without a PolicyDocument/,
    );
    refuses(mutate((b) => (b.Resources.group = { Type: 'AWS::IoT::ThingGroup', Properties: {} })), /unexpected resources: group/);
    refuses(mutate((b) => delete b.Resources.policy), /exactly one AWS::IoT::Policy/);
    refuses(
      mutate((b) => (b.Resources.thing.Properties.AttributePayload.floor = { Ref: 'Attribute_floor' })),
      /\{ "Ref": "Attribute_floor" \} names no declared parameter/,
    );
  });

  it('refuses what is not a JSON object', () => {
    refuses(() => checkTemplateBody([]), /one JSON object/);
    refuses(() => checkTemplateBody({ Resources: {} }), /no "Parameters"/);
  });
});
