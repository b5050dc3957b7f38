import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, loadConfig, pcaTemplateProblem, type StageCatalog } from '../lib/config';
import { PCA_ARN, TEST_ACCOUNT, TEST_STAGE, testConfig } from './helpers';

const load = (context: Record<string, unknown>) => testConfig(context);

function catalog(stages: Record<string, Record<string, unknown>>): StageCatalog {
  return new Map(
    Object.entries(stages).map(([name, settings]) => [name, { name, path: `stages/${name}.json`, settings }]),
  );
}

const rejects = (fn: () => unknown, message: RegExp) =>
  assert.throws(fn, (error: unknown) => error instanceof ConfigError && message.test(error.message));

describe('loadConfig', () => {
  it('has the documented defaults', () => {
    assert.deepEqual(load({}), {
      stage: TEST_STAGE,
      account: TEST_ACCOUNT,
      region: 'eu-west-1',
      terminationProtection: false,
      ownsAccountSingletons: true,
      issuerMode: 'iot',
      policyName: 'cvm-device-default',
      roleAliasName: 'cvm-device-role-alias',
      deviceRoleManagedPolicyArns: [],
      credentialDurationSeconds: 3600,
      pcaArn: undefined,
      createPrivateCa: false,
      privateCaCommonName: 'Certificate Vending Machine Device Root CA',
      crl: false,
      pcaRegisteredWithIot: false,
      pcaTemplateArn: undefined,
      validityDays: 365,
      cnPattern: undefined,
      architecture: 'arm64',
      certificateProvider: false,
      certificateProviderName: 'cvm-certificate-provider',
      fleetProvisioning: false,
      provisioningTemplateName: 'cvm-fleet-provisioning',
      claimPolicyName: 'cvm-claim',
      claimClientIdPrefix: undefined,
      deviceDefenderAudit: false,
      throttleRateLimit: 10,
      throttleBurstLimit: 20,
      vendReservedConcurrency: 10,
      providerReservedConcurrency: 10,
      hookReservedConcurrency: 10,
      lockoutFreeAttempts: 5,
      lockoutMaxSeconds: 900,
      renewalGraceHours: 168,
      renewalExpiredGraceDays: 30,
      iotDataEndpoint: undefined,
      iotCredentialsEndpoint: undefined,
      domainName: undefined,
      certificateArn: undefined,
      logRetentionDays: 365,
      alarmTopicArn: undefined,
    });
  });

  it('reads command-line strings and JSON values alike', () => {
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
    assert.equal(load({ hookReservedConcurrency: 'none' }).hookReservedConcurrency, undefined);
  });

  it('accepts the end-entity templates devices can use', () => {
    for (const name of ['EndEntityClientAuthCertificate', 'EndEntityCertificate', 'EndEntityClientAuthCertificate_APIPassthrough']) {
      const arn = `arn:aws:acm-pca:::template/${name}/V1`;
      assert.equal(load({ ...{ issuerMode: 'acm-pca', pcaArn: PCA_ARN }, pcaTemplateArn: arn }).pcaTemplateArn, arn);
    }
  });

  const invalid: [string, Record<string, unknown>, RegExp][] = [
    ['an unknown issuer', { issuerMode: 'self' }, /issuerMode/],
    ['acm-pca without a CA', { issuerMode: 'acm-pca' }, /pcaArn/],
    ['the provider without a CA', { certificateProvider: 'true' }, /pcaArn/],
    ['both a CA ARN and a created CA', { issuerMode: 'acm-pca', pcaArn: PCA_ARN, createPrivateCa: 'true' }, /not both/],
    ['a CA nothing uses', { pcaArn: PCA_ARN }, /only used with/],
    ['a malformed CA ARN', { issuerMode: 'acm-pca', pcaArn: 'arn:aws:acm-pca:eu-west-1:1:ca/x' }, /pcaArn/],
    ['a CRL without a created CA', { issuerMode: 'acm-pca', pcaArn: PCA_ARN, crl: 'true' }, /createPrivateCa/],
    ['provider settings without the provider', { cnPattern: '^x$' }, /certificateProvider=true/],
    ['a template without a Private CA', { pcaTemplateArn: 'arn:aws:acm-pca:::template/EndEntityCertificate/V1' }, /pcaTemplateArn/],
    ['a root CA template', { issuerMode: 'acm-pca', pcaArn: PCA_ARN, pcaTemplateArn: 'arn:aws:acm-pca:::template/RootCACertificate/V1' }, /not an EndEntity\* template/],
    [
      'a subordinate CA template',
      { issuerMode: 'acm-pca', pcaArn: PCA_ARN, pcaTemplateArn: 'arn:aws:acm-pca:::template/SubordinateCACertificate_PathLen0/V1' },
      /not an EndEntity\* template/,
    ],
    ['a code-signing template', { issuerMode: 'acm-pca', pcaArn: PCA_ARN, pcaTemplateArn: 'arn:aws:acm-pca:::template/CodeSigningCertificate/V1' }, /not an EndEntity\* template/],
    [
      'a blank end-entity template (no template-set usages)',
      { issuerMode: 'acm-pca', pcaArn: PCA_ARN, pcaTemplateArn: 'arn:aws:acm-pca:::template/BlankEndEntityCertificate_APIPassthrough/V1' },
      /not an EndEntity\* template/,
    ],
    [
      'a server-authentication template',
      { certificateProvider: 'true', pcaArn: PCA_ARN, pcaTemplateArn: 'arn:aws:acm-pca:::template/EndEntityServerAuthCertificate/V1' },
      /client authentication/,
    ],
    [
      'a CSR-passthrough template',
      { certificateProvider: 'true', pcaArn: PCA_ARN, pcaTemplateArn: 'arn:aws:acm-pca:::template/EndEntityClientAuthCertificate_CSRPassthrough/V1' },
      /extensions/,
    ],
    ['a template ARN of another shape', { issuerMode: 'acm-pca', pcaArn: PCA_ARN, pcaTemplateArn: 'EndEntityCertificate/V1' }, /pcaTemplateArn/],
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
    ['zero free attempts', { lockoutFreeAttempts: '0' }, /lockoutFreeAttempts/],
    ['a backoff cap below its first window', { lockoutMaxSeconds: '10' }, /lockoutMaxSeconds/],
    ['a renewal grace of zero hours', { renewalGraceHours: '0' }, /renewalGraceHours/],
    ['a negative expired-renewal grace', { renewalExpiredGraceDays: '-1' }, /renewalExpiredGraceDays/],
    ['the renamed maxFailedAttempts', { maxFailedAttempts: '3' }, /renamed: use "lockoutFreeAttempts"/],
    ['a provisioning template name AWS IoT refuses', { fleetProvisioning: 'true', provisioningTemplateName: 'has.dot' }, /provisioningTemplateName/],
    ['a provisioning template name over 36 characters', { fleetProvisioning: 'true', provisioningTemplateName: 'x'.repeat(37) }, /provisioningTemplateName/],
    ['a claim policy named like the device policy', { fleetProvisioning: 'true', claimPolicyName: 'cvm-device-default' }, /must differ/],
    ['a claim client-ID prefix without fleet provisioning', { claimClientIdPrefix: 'claim-' }, /fleetProvisioning=true/],
    ['a claim client-ID prefix with a wildcard', { fleetProvisioning: 'true', claimClientIdPrefix: 'claim-*' }, /claimClientIdPrefix/],
    ['the account on the command line', { account: '111111111111' }, /"account" is set in stages\/test.json only/],
    ['the singleton ownership on the command line', { ownsAccountSingletons: 'true' }, /ownsAccountSingletons/],
  ];
  for (const [what, context, message] of invalid) {
    it(`rejects ${what}`, () => rejects(() => load(context), message));
  }
});

describe('stages and precedence', () => {
  const stages = catalog({
    dev: { policyName: 'from-file', validityDays: 90, logRetentionDays: 30 },
    prod: { account: '111111111111', region: 'eu-west-1', terminationProtection: true, ownsAccountSingletons: true },
  });
  const context = (values: Record<string, unknown>) => (key: string) => values[key];

  it('requires -c stage and names the committed stages', () => {
    rejects(() => loadConfig(context({}), stages), /-c stage=<name>.*dev, prod/);
  });

  it('refuses a stage without a committed file', () => {
    rejects(() => loadConfig(context({ stage: 'qa' }), stages), /unknown stage "qa".*infra\/stages\/qa\.json/);
  });

  it('refuses a malformed stage name', () => {
    rejects(() => loadConfig(context({ stage: '../prod' }), stages), /"stage" must be a letter/);
  });

  it('takes values from the stage file over the defaults', () => {
    const { config, overrides } = loadConfig(context({ stage: 'dev' }), stages);
    assert.equal(config.policyName, 'from-file');
    assert.equal(config.logRetentionDays, 30);
    assert.equal(config.roleAliasName, 'cvm-device-role-alias');
    assert.deepEqual(overrides, {});
  });

  it('takes -c values over the stage file, and reports them', () => {
    const { config, overrides } = loadConfig(context({ stage: 'dev', policyName: 'from-cli', throttleRateLimit: '3' }), stages);
    assert.equal(config.policyName, 'from-cli');
    assert.equal(config.throttleRateLimit, 3);
    assert.equal(config.validityDays, 90);
    assert.deepEqual(overrides, { policyName: 'from-cli', throttleRateLimit: '3' });
  });

  it('lets -c turn termination protection off and on', () => {
    assert.equal(loadConfig(context({ stage: 'prod' }), stages).config.terminationProtection, true);
    assert.equal(loadConfig(context({ stage: 'prod', terminationProtection: 'false' }), stages).config.terminationProtection, false);
  });

  it('names the file a wrong value comes from', () => {
    const bad = catalog({ dev: { validityDays: 'a year' } });
    rejects(() => loadConfig(context({ stage: 'dev' }), bad), /setting "validityDays" \(from stages\/dev\.json\)/);
    rejects(() => loadConfig(context({ stage: 'dev', validityDays: 'forever' }), stages), /"validityDays" \(from -c\)/);
  });

  it('lets only the stage that owns the account singletons enable them', () => {
    rejects(
      () => loadConfig(context({ stage: 'dev', certificateProvider: 'true', pcaArn: PCA_ARN }), stages),
      /stage "dev" enables "certificateProvider".*once per account/,
    );
    rejects(() => loadConfig(context({ stage: 'dev', deviceDefenderAudit: 'true' }), stages), /"deviceDefenderAudit"/);
    const prod = loadConfig(context({ stage: 'prod', certificateProvider: 'true', pcaArn: PCA_ARN, deviceDefenderAudit: 'true' }), stages);
    assert.equal(prod.config.certificateProvider, true);
    assert.equal(prod.config.deviceDefenderAudit, true);
  });

  it('requires the singleton owner to name its account, and account and region together', () => {
    rejects(() => loadConfig(context({ stage: 'x' }), catalog({ x: { ownsAccountSingletons: true } })), /must name the "account"/);
    rejects(() => loadConfig(context({ stage: 'x' }), catalog({ x: { account: '111111111111' } })), /both "account" and "region"/);
  });
});

describe('pcaTemplateProblem', () => {
  it('accepts end-entity client templates and refuses the rest', () => {
    assert.equal(pcaTemplateProblem('EndEntityClientAuthCertificate'), undefined);
    assert.equal(pcaTemplateProblem('EndEntityCertificate_APIPassthrough'), undefined);
    for (const name of ['RootCACertificate', 'SubordinateCACertificate_PathLen3', 'OCSPSigningCertificate', '']) {
      assert.match(pcaTemplateProblem(name) ?? '', /not an EndEntity\* template/, name);
    }
  });
});
