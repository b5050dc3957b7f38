import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Match } from 'aws-cdk-lib/assertions';
import { ARN, CONFIGS, PCA_ARN, TEST_STAGE, flatten, onlyLogicalId, synth } from './helpers';

const DEFAULT_TEMPLATE = { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':acm-pca:::template/EndEntityClientAuthCertificate/V1']] };

function environmentOf(context: Record<string, unknown>, prefix: string): Record<string, unknown> {
  const { template } = synth(context);
  const fn = template.toJSON().Resources[onlyLogicalId(template, 'AWS::Lambda::Function', prefix)];
  return fn.Properties.Environment.Variables;
}

describe('issuerMode=acm-pca', () => {
  it('tells the vend function to use the Private CA, with the client-authentication end-entity template', () => {
    const env = environmentOf(CONFIGS.acmPca, 'VendFunction');
    assert.equal(env.CVM_ISSUER, 'acm-pca');
    assert.equal(env.CVM_PCA_ARN, PCA_ARN);
    assert.equal(env.CVM_VALIDITY_DAYS, '365');
    assert.deepEqual(env.CVM_PCA_TEMPLATE_ARN, DEFAULT_TEMPLATE);
    assert.equal(env.CVM_PCA_REGISTERED_WITH_IOT, undefined);
    // An existing CA's key type is not known at deploy time: the function asks it once.
    assert.equal(env.CVM_SIGNING_ALGORITHM, undefined);
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

  it('deploys the provider function: 256 MB, 5 s, JSON and system logs at INFO, reserved concurrency', () => {
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
      SystemLogLevel: 'INFO',
      LogGroup: { Ref: logGroup },
    });
  });

  it('gives the provider its environment', () => {
    assert.deepEqual(environmentOf(CONFIGS.provider, 'CertificateProviderFunction'), {
      CVM_PCA_ARN: PCA_ARN,
      CVM_PCA_TEMPLATE_ARN: DEFAULT_TEMPLATE,
      CVM_VALIDITY_DAYS: '365',
      CVM_STAGE: TEST_STAGE,
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
      CVM_STAGE: TEST_STAGE,
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

  it('hands the created CA and its signing algorithm to both functions, which wait for its activation', () => {
    const activation = onlyLogicalId(template, 'AWS::ACMPCA::CertificateAuthorityActivation');
    for (const prefix of ['VendFunction', 'CertificateProviderFunction']) {
      const fn = template.toJSON().Resources[onlyLogicalId(template, 'AWS::Lambda::Function', prefix)];
      const env = fn.Properties.Environment.Variables;
      assert.deepEqual(env.CVM_PCA_ARN, { 'Fn::GetAtt': [ca, 'Arn'] });
      // The CA's key is EC P-256: the functions need not ask the CA for its key type.
      assert.equal(env.CVM_SIGNING_ALGORITHM, 'SHA256WITHECDSA');
      assert.deepEqual(env.CVM_PCA_TEMPLATE_ARN, DEFAULT_TEMPLATE);
      assert.ok(fn.DependsOn.includes(activation), `${prefix} does not wait for the CA activation`);
    }
  });

  it('publishes no CRL unless asked', () => {
    template.hasResourceProperties('AWS::ACMPCA::CertificateAuthority', { RevocationConfiguration: Match.absent() });
    template.resourceCountIs('AWS::S3::Bucket', 0);
    template.resourceCountIs('AWS::CloudFront::Distribution', 0);
  });
});

describe('crl=true', () => {
  const { template } = synth(CONFIGS.crl);
  const bucket = onlyLogicalId(template, 'AWS::S3::Bucket');
  const distribution = onlyLogicalId(template, 'AWS::CloudFront::Distribution');

  it('keeps the CRL in a private bucket: Block Public Access on, ACLs disabled, retained', () => {
    template.hasResource('AWS::S3::Bucket', {
      Properties: Match.objectLike({
        PublicAccessBlockConfiguration: {
          BlockPublicAcls: true,
          BlockPublicPolicy: true,
          IgnorePublicAcls: true,
          RestrictPublicBuckets: true,
        },
        OwnershipControls: { Rules: [{ ObjectOwnership: 'BucketOwnerEnforced' }] },
      }),
      DeletionPolicy: 'Retain',
    });
  });

  it('lets AWS Private CA of this account write the CRL, and CloudFront read it', () => {
    const policy = Object.values(template.findResources('AWS::S3::BucketPolicy'))[0].Properties;
    assert.deepEqual(policy.Bucket, { Ref: bucket });
    const statements = policy.PolicyDocument.Statement;
    const pca = statements.find((st: any) => st.Sid === 'PrivateCaWritesCrl');
    assert.deepEqual(pca.Principal, { Service: 'acm-pca.amazonaws.com' });
    assert.deepEqual([...pca.Action].sort(), ['s3:GetBucketAcl', 's3:GetBucketLocation', 's3:PutObject', 's3:PutObjectAcl']);
    assert.deepEqual(pca.Condition.StringEquals, { 'aws:SourceAccount': { Ref: 'AWS::AccountId' } });
    assert.equal(
      flatten(pca.Condition.ArnLike['aws:SourceArn']),
      'arn:${AWS::Partition}:acm-pca:${AWS::Region}:${AWS::AccountId}:certificate-authority/*',
    );
    const reader = statements.find((st: any) => st.Principal?.Service === 'cloudfront.amazonaws.com');
    assert.equal(reader.Action, 's3:GetObject');
    assert.equal(flatten(reader.Condition.StringEquals['AWS:SourceArn']).includes(distribution), true);
    assert.equal(statements.length, 2, 'nobody else may use the bucket');
  });

  it('serves the CRL through CloudFront with origin access control, over HTTP too', () => {
    template.resourceCountIs('AWS::CloudFront::OriginAccessControl', 1);
    template.hasResourceProperties('AWS::CloudFront::Distribution', {
      DistributionConfig: Match.objectLike({
        DefaultCacheBehavior: Match.objectLike({ ViewerProtocolPolicy: 'allow-all', AllowedMethods: ['GET', 'HEAD'] }),
        Origins: [Match.objectLike({ OriginAccessControlId: Match.anyValue(), S3OriginConfig: { OriginAccessIdentity: '' } })],
      }),
    });
  });

  it('configures the CA to publish there and name the distribution in certificates', () => {
    const ca = template.toJSON().Resources[onlyLogicalId(template, 'AWS::ACMPCA::CertificateAuthority')];
    assert.deepEqual(ca.Properties.RevocationConfiguration, {
      CrlConfiguration: {
        Enabled: true,
        ExpirationInDays: 7,
        S3BucketName: { Ref: bucket },
        S3ObjectAcl: 'BUCKET_OWNER_FULL_CONTROL',
        CustomCname: { 'Fn::GetAtt': [distribution, 'DomainName'] },
        CrlDistributionPointExtensionConfiguration: { OmitExtension: false },
      },
    });
    const bucketPolicy = onlyLogicalId(template, 'AWS::S3::BucketPolicy');
    assert.ok(ca.DependsOn.includes(bucketPolicy), 'the CA is created before it may write to the bucket');
    template.hasOutput('CrlDistributionDomain', { Value: { 'Fn::GetAtt': [distribution, 'DomainName'] } });
  });
});

describe('optional vend settings', () => {
  it('passes configured endpoints, lockout and renewal settings', () => {
    const env = environmentOf(
      {
        ...CONFIGS.endpointsGiven,
        lockoutFreeAttempts: '3',
        lockoutMaxSeconds: '3600',
        renewalGraceHours: '72',
        renewalExpiredGraceDays: '0',
      },
      'VendFunction',
    );
    assert.equal(env.CVM_IOT_DATA_ENDPOINT, CONFIGS.endpointsGiven.iotDataEndpoint);
    assert.equal(env.CVM_IOT_CREDENTIALS_ENDPOINT, CONFIGS.endpointsGiven.iotCredentialsEndpoint);
    assert.equal(env.CVM_LOCKOUT_FREE_ATTEMPTS, '3');
    assert.equal(env.CVM_LOCKOUT_MAX_SECONDS, '3600');
    assert.equal(env.CVM_RENEWAL_GRACE_HOURS, '72');
    assert.equal(env.CVM_RENEWAL_EXPIRED_GRACE_DAYS, '0');
    assert.equal(env.CVM_MAX_FAILED_ATTEMPTS, undefined);
  });
});

describe('deviceDefenderAudit=true', () => {
  const { template } = synth(CONFIGS.audit);

  it('enables the expiring-certificate check for the account, with its own audit role', () => {
    const config = Object.values(template.findResources('AWS::IoT::AccountAuditConfiguration'));
    assert.equal(config.length, 1);
    const props = config[0].Properties;
    assert.deepEqual(props.AccountId, { Ref: 'AWS::AccountId' });
    assert.deepEqual(props.AuditCheckConfigurations, { DeviceCertificateExpiringCheck: { Enabled: true } });
    const role = props.RoleArn['Fn::GetAtt'][0];
    const roleProps = template.toJSON().Resources[role].Properties;
    assert.equal(flatten(roleProps.ManagedPolicyArns[0]), 'arn:${AWS::Partition}:iam::aws:policy/service-role/AWSIoTDeviceDefenderAudit');
    const [trust] = roleProps.AssumeRolePolicyDocument.Statement;
    assert.deepEqual(trust.Principal, { Service: 'iot.amazonaws.com' });
    assert.deepEqual(trust.Condition.StringEquals, { 'aws:SourceAccount': { Ref: 'AWS::AccountId' } });
    assert.equal(flatten(trust.Condition.ArnLike['aws:SourceArn']), ARN.iot('*'));
  });

  it('runs the check daily, after the configuration enables it', () => {
    const configuration = onlyLogicalId(template, 'AWS::IoT::AccountAuditConfiguration');
    template.hasResource('AWS::IoT::ScheduledAudit', {
      Properties: {
        Frequency: 'DAILY',
        TargetCheckNames: ['DEVICE_CERTIFICATE_EXPIRING_CHECK'],
        ScheduledAuditName: `cvm-${TEST_STAGE}-device-certificate-expiry`,
      },
      DependsOn: Match.arrayWith([configuration]),
    });
  });

  it('sends audit results to the alarm topic when there is one', () => {
    const topic = 'arn:aws:sns:eu-west-1:123456789012:cvm-ops';
    const t = synth({ ...CONFIGS.audit, alarmTopicArn: topic }).template;
    const props = Object.values(t.findResources('AWS::IoT::AccountAuditConfiguration'))[0].Properties;
    assert.equal(props.AuditNotificationTargetConfigurations.Sns.TargetArn, topic);
    assert.equal(props.AuditNotificationTargetConfigurations.Sns.Enabled, true);
    t.hasResourceProperties('AWS::IAM::Policy', {
      PolicyDocument: { Statement: [Match.objectLike({ Sid: 'PublishAuditResults', Action: 'sns:Publish', Resource: topic })] },
    });
    const withoutTopic = Object.values(template.findResources('AWS::IoT::AccountAuditConfiguration'))[0].Properties;
    assert.equal(withoutTopic.AuditNotificationTargetConfigurations, undefined);
  });

  it('is off by default', () => {
    synth(CONFIGS.default).template.resourceCountIs('AWS::IoT::AccountAuditConfiguration', 0);
    synth(CONFIGS.default).template.resourceCountIs('AWS::IoT::ScheduledAudit', 0);
  });
});
