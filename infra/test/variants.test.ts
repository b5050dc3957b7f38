import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Match } from 'aws-cdk-lib/assertions';
import { ARN, CONFIGS, PCA_ARN, flatten, onlyLogicalId, synth } from './helpers';

function environmentOf(context: Record<string, unknown>, prefix: string): Record<string, unknown> {
  const { template } = synth(context);
  const fn = template.toJSON().Resources[onlyLogicalId(template, 'AWS::Lambda::Function', prefix)];
  return fn.Properties.Environment.Variables;
}

describe('issuerMode=acm-pca', () => {
  it('tells the vend function to use the Private CA', () => {
    const env = environmentOf(CONFIGS.acmPca, 'VendFunction');
    assert.equal(env.CVM_ISSUER, 'acm-pca');
    assert.equal(env.CVM_PCA_ARN, PCA_ARN);
    assert.equal(env.CVM_VALIDITY_DAYS, '365');
    assert.equal(env.CVM_PCA_TEMPLATE_ARN, undefined);
    assert.equal(env.CVM_PCA_REGISTERED_WITH_IOT, undefined);
  });

  it('passes the template, validity and CA registration settings', () => {
    const env = environmentOf(
      {
        ...CONFIGS.acmPca,
        pcaTemplateArn: 'arn:aws:acm-pca:::template/EndEntityClientAuthCertificate/V1',
        validityDays: '730',
        pcaRegisteredWithIot: 'true',
      },
      'VendFunction',
    );
    assert.equal(env.CVM_PCA_TEMPLATE_ARN, 'arn:aws:acm-pca:::template/EndEntityClientAuthCertificate/V1');
    assert.equal(env.CVM_VALIDITY_DAYS, '730');
    assert.equal(env.CVM_PCA_REGISTERED_WITH_IOT, 'true');
  });

  it('reserves less concurrency: RegisterCertificateWithoutCA allows 10 TPS, not 15', () => {
    synth(CONFIGS.acmPca).template.hasResourceProperties('AWS::Lambda::Function', {
      Environment: { Variables: Match.objectLike({ CVM_ISSUER: 'acm-pca' }) },
      ReservedConcurrentExecutions: 7,
    });
  });

  it('uses an existing CA without creating one', () => {
    synth(CONFIGS.acmPca).template.resourceCountIs('AWS::ACMPCA::CertificateAuthority', 0);
  });
});

describe('certificateProvider=true', () => {
  const { template } = synth(CONFIGS.provider);
  const fn = onlyLogicalId(template, 'AWS::Lambda::Function', 'CertificateProviderFunction');

  it('deploys the provider function: 256 MB, 5 s, JSON logs, reserved concurrency', () => {
    const logGroup = onlyLogicalId(template, 'AWS::Logs::LogGroup', 'CertificateProviderLogGroup');
    template.resourceCountIs('AWS::Lambda::Function', 2);
    const props = template.toJSON().Resources[fn].Properties;
    assert.equal(props.Runtime, 'provided.al2023');
    assert.deepEqual(props.Architectures, ['arm64']);
    assert.equal(props.MemorySize, 256);
    assert.equal(props.Timeout, 5);
    assert.equal(props.ReservedConcurrentExecutions, 10);
    assert.deepEqual(props.LoggingConfig, {
      LogFormat: 'JSON',
      ApplicationLogLevel: 'INFO',
      SystemLogLevel: 'WARN',
      LogGroup: { Ref: logGroup },
    });
  });

  it('gives the provider its environment', () => {
    assert.deepEqual(environmentOf(CONFIGS.provider, 'CertificateProviderFunction'), {
      CVM_PCA_ARN: PCA_ARN,
      CVM_VALIDITY_DAYS: '365',
    });
    const custom = {
      ...CONFIGS.provider,
      pcaTemplateArn: 'arn:aws:acm-pca:::template/EndEntityClientAuthCertificate/V1',
      validityDays: '90',
      cnPattern: '^ZK[0-9A-F]{16}$',
    };
    assert.deepEqual(environmentOf(custom, 'CertificateProviderFunction'), {
      CVM_PCA_ARN: PCA_ARN,
      CVM_PCA_TEMPLATE_ARN: 'arn:aws:acm-pca:::template/EndEntityClientAuthCertificate/V1',
      CVM_VALIDITY_DAYS: '90',
      CVM_CN_PATTERN: '^ZK[0-9A-F]{16}$',
    });
  });

  it('registers the function as the account default for CreateCertificateFromCsr', () => {
    template.resourceCountIs('AWS::IoT::CertificateProvider', 1);
    template.hasResourceProperties('AWS::IoT::CertificateProvider', {
      CertificateProviderName: 'cvm-certificate-provider',
      LambdaFunctionArn: { 'Fn::GetAtt': [fn, 'Arn'] },
      AccountDefaultForOperations: ['CreateCertificateFromCsr'],
    });
  });

  it('creates the provider only after AWS IoT may invoke the function', () => {
    const permission = Object.keys(
      template.findResources('AWS::Lambda::Permission', { Properties: { Principal: 'iot.amazonaws.com' } }),
    );
    assert.equal(permission.length, 1);
    template.hasResource('AWS::IoT::CertificateProvider', { DependsOn: Match.arrayWith([permission[0]]) });
  });

  it('scopes the invoke permission to the named provider', () => {
    const t = synth({ ...CONFIGS.provider, certificateProviderName: 'fleet-signer' }).template;
    const permission = Object.values(
      t.findResources('AWS::Lambda::Permission', { Properties: { Principal: 'iot.amazonaws.com' } }),
    )[0];
    assert.equal(flatten(permission.Properties.SourceArn), ARN.iot('certificateprovider/fleet-signer'));
    t.hasResourceProperties('AWS::IoT::CertificateProvider', { CertificateProviderName: 'fleet-signer' });
  });

  it('leaves the vend function on the AWS IoT issuer unless asked', () => {
    const env = environmentOf(CONFIGS.provider, 'VendFunction');
    assert.equal(env.CVM_ISSUER, 'iot');
    assert.equal(env.CVM_PCA_ARN, undefined);
    assert.equal(env.CVM_VALIDITY_DAYS, undefined);
  });
});

describe('createPrivateCa=true', () => {
  const { template } = synth(CONFIGS.createdCa);
  const ca = onlyLogicalId(template, 'AWS::ACMPCA::CertificateAuthority');

  it('creates an EC P-256 root CA signing with SHA256WITHECDSA', () => {
    template.hasResourceProperties('AWS::ACMPCA::CertificateAuthority', {
      Type: 'ROOT',
      KeyAlgorithm: 'EC_prime256v1',
      SigningAlgorithm: 'SHA256WITHECDSA',
      Subject: { CommonName: 'Certificate Vending Machine Device Root CA' },
    });
    template.hasResource('AWS::ACMPCA::CertificateAuthority', { DeletionPolicy: 'Retain' });
  });

  it('self-signs the CA certificate and activates the CA', () => {
    template.hasResourceProperties('AWS::ACMPCA::Certificate', {
      CertificateAuthorityArn: { 'Fn::GetAtt': [ca, 'Arn'] },
      CertificateSigningRequest: { 'Fn::GetAtt': [ca, 'CertificateSigningRequest'] },
      SigningAlgorithm: 'SHA256WITHECDSA',
      Validity: { Type: 'YEARS', Value: 10 },
    });
    const cert = onlyLogicalId(template, 'AWS::ACMPCA::Certificate');
    assert.equal(
      flatten(template.toJSON().Resources[cert].Properties.TemplateArn),
      'arn:${AWS::Partition}:acm-pca:::template/RootCACertificate/V1',
    );
    template.hasResourceProperties('AWS::ACMPCA::CertificateAuthorityActivation', {
      CertificateAuthorityArn: { 'Fn::GetAtt': [ca, 'Arn'] },
      Certificate: { 'Fn::GetAtt': [cert, 'Certificate'] },
      Status: 'ACTIVE',
    });
  });

  it('hands the created CA to both functions, which wait for its activation', () => {
    const activation = onlyLogicalId(template, 'AWS::ACMPCA::CertificateAuthorityActivation');
    for (const prefix of ['VendFunction', 'CertificateProviderFunction']) {
      const fn = template.toJSON().Resources[onlyLogicalId(template, 'AWS::Lambda::Function', prefix)];
      assert.deepEqual(fn.Properties.Environment.Variables.CVM_PCA_ARN, { 'Fn::GetAtt': [ca, 'Arn'] });
      assert.ok(fn.DependsOn.includes(activation), `${prefix} does not wait for the CA activation`);
    }
  });
});

describe('optional vend settings', () => {
  it('passes configured endpoints and lockout threshold', () => {
    const env = environmentOf({ ...CONFIGS.endpointsGiven, maxFailedAttempts: '3' }, 'VendFunction');
    assert.equal(env.CVM_IOT_DATA_ENDPOINT, CONFIGS.endpointsGiven.iotDataEndpoint);
    assert.equal(env.CVM_IOT_CREDENTIALS_ENDPOINT, CONFIGS.endpointsGiven.iotCredentialsEndpoint);
    assert.equal(env.CVM_MAX_FAILED_ATTEMPTS, '3');
  });
});
