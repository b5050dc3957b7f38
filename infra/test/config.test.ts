import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, loadConfig } from '../lib/config';
import { PCA_ARN } from './helpers';

const load = (context: Record<string, unknown>) => loadConfig((key) => context[key]);

describe('loadConfig', () => {
  it('has the documented defaults', () => {
    assert.deepEqual(load({}), {
      stage: 'dev',
      issuerMode: 'iot',
      policyName: 'cvm-device-default',
      roleAliasName: 'cvm-device-role-alias',
      deviceRoleManagedPolicyArns: [],
      credentialDurationSeconds: 3600,
      pcaArn: undefined,
      createPrivateCa: false,
      privateCaCommonName: 'Certificate Vending Machine Device Root CA',
      pcaRegisteredWithIot: false,
      pcaTemplateArn: undefined,
      validityDays: 365,
      cnPattern: undefined,
      architecture: 'arm64',
      certificateProvider: false,
      certificateProviderName: 'cvm-certificate-provider',
      throttleRateLimit: 10,
      throttleBurstLimit: 20,
      vendReservedConcurrency: 10,
      providerReservedConcurrency: 10,
      maxFailedAttempts: 5,
      iotDataEndpoint: undefined,
      iotCredentialsEndpoint: undefined,
      domainName: undefined,
      certificateArn: undefined,
      logRetentionDays: 365,
      alarmTopicArn: undefined,
    });
  });

  it('reads command-line strings and cdk.json values alike', () => {
    const a = 'arn:aws:iam::123456789012:policy/a';
    const b = 'arn:aws:iam::aws:policy/b';
    const fromCli = load({
      certificateProvider: 'true',
      pcaArn: PCA_ARN,
      throttleRateLimit: '5',
      deviceRoleManagedPolicyArns: `${a}, ${b}`,
    });
    const fromJson = load({
      certificateProvider: true,
      pcaArn: PCA_ARN,
      throttleRateLimit: 5,
      deviceRoleManagedPolicyArns: [a, b],
    });
    assert.deepEqual(fromCli, fromJson);
    assert.equal(fromCli.certificateProvider, true);
    assert.equal(fromCli.throttleRateLimit, 5);
    assert.deepEqual(fromCli.deviceRoleManagedPolicyArns, [a, b]);
  });

  it('lowers the vend concurrency default in acm-pca mode and accepts "none"', () => {
    assert.equal(load({ issuerMode: 'acm-pca', pcaArn: PCA_ARN }).vendReservedConcurrency, 7);
    assert.equal(load({ vendReservedConcurrency: 'none' }).vendReservedConcurrency, undefined);
    assert.equal(load({ providerReservedConcurrency: 'none' }).providerReservedConcurrency, undefined);
  });

  const invalid: [string, Record<string, unknown>, RegExp][] = [
    ['an unknown issuer', { issuerMode: 'self' }, /issuerMode/],
    ['acm-pca without a CA', { issuerMode: 'acm-pca' }, /pcaArn/],
    ['the provider without a CA', { certificateProvider: 'true' }, /pcaArn/],
    ['both a CA ARN and a created CA', { issuerMode: 'acm-pca', pcaArn: PCA_ARN, createPrivateCa: 'true' }, /not both/],
    ['a CA nothing uses', { pcaArn: PCA_ARN }, /only used with/],
    ['a malformed CA ARN', { issuerMode: 'acm-pca', pcaArn: 'arn:aws:acm-pca:eu-west-1:1:ca/x' }, /pcaArn/],
    ['provider settings without the provider', { cnPattern: '^x$' }, /certificateProvider=true/],
    ['a template without a Private CA', { pcaTemplateArn: 'arn:aws:acm-pca:::template/EndEntityCertificate/V1' }, /pcaTemplateArn/],
    ['CA registration outside acm-pca mode', { certificateProvider: 'true', pcaArn: PCA_ARN, pcaRegisteredWithIot: 'true' }, /acm-pca only/],
    ['only one of the two endpoints', { iotDataEndpoint: 'x-ats.iot.eu-west-1.amazonaws.com' }, /or neither/],
    ['an invalid CN pattern', { certificateProvider: 'true', pcaArn: PCA_ARN, cnPattern: '([' }, /cnPattern/],
    ['an unknown architecture', { architecture: 'riscv64' }, /architecture/],
    ['a non-boolean flag', { certificateProvider: 'yes' }, /true or false/],
    ['a fractional rate', { throttleRateLimit: '2.5' }, /throttleRateLimit/],
    ['a burst below the rate', { throttleRateLimit: '10', throttleBurstLimit: '5' }, /throttleBurstLimit/],
    ['a zero concurrency', { vendReservedConcurrency: '0' }, /vendReservedConcurrency/],
    ['a domain without certificate', { domainName: 'cvm.example.com' }, /domainName.*certificateArn/],
    ['an endpoint with a scheme', { iotDataEndpoint: 'https://x-ats.iot.eu-west-1.amazonaws.com' }, /iotDataEndpoint/],
    ['an unsupported retention', { logRetentionDays: '42' }, /logRetentionDays/],
    ['an invalid policy name', { policyName: 'has space' }, /policyName/],
    ['a credential duration above 12 h', { credentialDurationSeconds: '50000' }, /credentialDurationSeconds/],
    ['a device policy that is not an IAM policy ARN', { deviceRoleManagedPolicyArns: 'AdministratorAccess' }, /deviceRoleManagedPolicyArns/],
  ];
  for (const [what, context, message] of invalid) {
    it(`rejects ${what}`, () => {
      assert.throws(() => load(context), (error: unknown) => error instanceof ConfigError && message.test(error.message));
    });
  }
});
