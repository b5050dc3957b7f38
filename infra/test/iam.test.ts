import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Match } from 'aws-cdk-lib/assertions';
import {
  ARN,
  CONFIGS,
  PCA_ARN,
  type Statement,
  flatten,
  normalize,
  onlyLogicalId,
  roleOf,
  statementsOfRole,
  synth,
} from './helpers';

const CERT_ACTIONS = [
  'iot:AttachPolicy',
  'iot:AttachThingPrincipal',
  'iot:DeleteCertificate',
  'iot:DetachPolicy',
  'iot:DetachThingPrincipal',
  // A confirmed renewal detaches the old certificate from every policy it has.
  'iot:ListAttachedPolicies',
  'iot:UpdateCertificate',
];

function bySid(statements: Statement[]): Record<string, Omit<Statement, 'sid'>> {
  const out: Record<string, Omit<Statement, 'sid'>> = {};
  for (const { sid, ...rest } of statements) {
    assert.ok(sid, `statement without Sid: ${JSON.stringify(rest)}`);
    assert.equal(out[sid], undefined, `duplicate Sid ${sid}`);
    out[sid] = rest;
  }
  return out;
}

const allow = (actions: string[], resources: string[], condition?: unknown) => ({
  effect: 'Allow',
  actions: [...actions].sort(),
  resources: [...resources].sort(),
  condition,
});

/** The default device-certificate template, as the template renders it. */
const DEFAULT_TEMPLATE = { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':acm-pca:::template/EndEntityClientAuthCertificate/V1']] };
const onlyTemplate = (template: unknown) => ({ StringEquals: { 'acm-pca:TemplateArn': template } });

function vendStatements(context: Record<string, unknown>) {
  const { template } = synth(context);
  const fn = onlyLogicalId(template, 'AWS::Lambda::Function', 'VendFunction');
  return { template, statements: bySid(statementsOfRole(template, roleOf(template, fn))) };
}

function providerStatements(context: Record<string, unknown>) {
  const { template } = synth(context);
  const fn = onlyLogicalId(template, 'AWS::Lambda::Function', 'CertificateProviderFunction');
  return { template, statements: bySid(statementsOfRole(template, roleOf(template, fn))) };
}

describe('vend function IAM', () => {
  it('grants exactly the calls of the iot issuer, on the narrowest resources', () => {
    const { template, statements } = vendStatements(CONFIGS.default);
    const table = onlyLogicalId(template, 'AWS::DynamoDB::Table');
    const logGroup = onlyLogicalId(template, 'AWS::Logs::LogGroup', 'VendLogGroup');
    assert.deepEqual(statements, {
      WriteOwnLogs: allow(['logs:CreateLogStream', 'logs:PutLogEvents'], [`\${${logGroup}.Arn}`]),
      ReadWriteDeviceRecords: allow(['dynamodb:GetItem', 'dynamodb:UpdateItem'], [`\${${table}.Arn}`]),
      IssueWithAwsIot: allow(['iot:CreateCertificateFromCsr'], ['*']),
      ManageVendedCertificates: allow(CERT_ACTIONS, [ARN.iot('cert/*')]),
      CreateThings: allow(['iot:CreateThing'], [ARN.iot('thing/*')]),
      DiscoverIotEndpoints: allow(['iot:DescribeEndpoint'], ['*']),
    });
  });

  it('scopes DynamoDB to the device table (fine-grained match)', () => {
    const { template } = synth(CONFIGS.default);
    const table = onlyLogicalId(template, 'AWS::DynamoDB::Table');
    template.hasResourceProperties('AWS::IAM::Policy', {
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({
            Sid: 'ReadWriteDeviceRecords',
            Action: ['dynamodb:GetItem', 'dynamodb:UpdateItem'],
            Effect: 'Allow',
            Resource: { 'Fn::GetAtt': [table, 'Arn'] },
          }),
        ]),
      },
    });
  });

  it('in acm-pca mode swaps CreateCertificateFromCsr for the Private CA calls and RegisterCertificateWithoutCA', () => {
    const { template, statements } = vendStatements(CONFIGS.acmPca);
    const table = onlyLogicalId(template, 'AWS::DynamoDB::Table');
    const logGroup = onlyLogicalId(template, 'AWS::Logs::LogGroup', 'VendLogGroup');
    assert.deepEqual(statements, {
      WriteOwnLogs: allow(['logs:CreateLogStream', 'logs:PutLogEvents'], [`\${${logGroup}.Arn}`]),
      ReadWriteDeviceRecords: allow(['dynamodb:GetItem', 'dynamodb:UpdateItem'], [`\${${table}.Arn}`]),
      IssueWithEndEntityTemplate: allow(['acm-pca:IssueCertificate'], [PCA_ARN], onlyTemplate(DEFAULT_TEMPLATE)),
      UsePrivateCa: allow(
        ['acm-pca:DescribeCertificateAuthority', 'acm-pca:GetCertificate', 'acm-pca:RevokeCertificate'],
        [PCA_ARN],
      ),
      RegisterPrivateCaCertificate: allow(['iot:RegisterCertificateWithoutCA'], ['*']),
      ManageVendedCertificates: allow([...CERT_ACTIONS, 'iot:DescribeCertificate'], [ARN.iot('cert/*')]),
      CreateThings: allow(['iot:CreateThing'], [ARN.iot('thing/*')]),
      DiscoverIotEndpoints: allow(['iot:DescribeEndpoint'], ['*']),
    });
  });

  it('issues only with the configured end-entity template (fine-grained match)', () => {
    const configured = 'arn:aws:acm-pca:::template/EndEntityCertificate/V1';
    synth({ ...CONFIGS.acmPca, pcaTemplateArn: configured }).template.hasResourceProperties('AWS::IAM::Policy', {
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({
            Sid: 'IssueWithEndEntityTemplate',
            Action: 'acm-pca:IssueCertificate',
            Resource: PCA_ARN,
            Condition: { StringEquals: { 'acm-pca:TemplateArn': configured } },
          }),
        ]),
      },
    });
  });

  it('signs with the created Private CA when createPrivateCa=true', () => {
    const { template, statements } = vendStatements(CONFIGS.createdCa);
    const ca = onlyLogicalId(template, 'AWS::ACMPCA::CertificateAuthority');
    assert.deepEqual(statements.IssueWithEndEntityTemplate?.resources, [`\${${ca}.Arn}`]);
    // The signing algorithm is passed in the environment; DescribeCertificateAuthority stays,
    // as the call that opens the CA's connection during init.
    assert.deepEqual(
      statements.UsePrivateCa,
      allow(
        ['acm-pca:DescribeCertificateAuthority', 'acm-pca:GetCertificate', 'acm-pca:RevokeCertificate'],
        [`\${${ca}.Arn}`],
      ),
    );
  });

  it('keeps iot:DescribeEndpoint when both endpoints are configured: the warm-up call at init', () => {
    const { statements } = vendStatements(CONFIGS.endpointsGiven);
    assert.deepEqual(statements.DiscoverIotEndpoints, allow(['iot:DescribeEndpoint'], ['*']));
    assert.deepEqual(Object.keys(statements).sort(), [
      'CreateThings',
      'DiscoverIotEndpoints',
      'IssueWithAwsIot',
      'ManageVendedCertificates',
      'ReadWriteDeviceRecords',
      'WriteOwnLogs',
    ]);
  });

  it('registers with the CA, and may read its certificate, when pcaRegisteredWithIot=true', () => {
    const { statements } = vendStatements({ ...CONFIGS.acmPca, pcaRegisteredWithIot: 'true' });
    assert.deepEqual(statements.RegisterPrivateCaCertificate, allow(['iot:RegisterCertificate'], ['*']));
    assert.deepEqual(
      statements.UsePrivateCa,
      allow(
        [
          'acm-pca:DescribeCertificateAuthority',
          'acm-pca:GetCertificate',
          'acm-pca:GetCertificateAuthorityCertificate',
          'acm-pca:RevokeCertificate',
        ],
        [PCA_ARN],
      ),
    );
  });
});

describe('certificate provider IAM', () => {
  it('grants only the three Private CA calls, on the CA, issuing with the end-entity template only', () => {
    const { template, statements } = providerStatements(CONFIGS.provider);
    const logGroup = onlyLogicalId(template, 'AWS::Logs::LogGroup', 'CertificateProviderLogGroup');
    assert.deepEqual(statements, {
      WriteOwnLogs: allow(['logs:CreateLogStream', 'logs:PutLogEvents'], [`\${${logGroup}.Arn}`]),
      IssueWithEndEntityTemplate: allow(['acm-pca:IssueCertificate'], [PCA_ARN], onlyTemplate(DEFAULT_TEMPLATE)),
      ReadIssuedCertificates: allow(['acm-pca:DescribeCertificateAuthority', 'acm-pca:GetCertificate'], [PCA_ARN]),
    });
  });

  it('reads the created CA too: DescribeCertificateAuthority is its warm-up call at init', () => {
    const { template, statements } = providerStatements(CONFIGS.createdCa);
    const ca = onlyLogicalId(template, 'AWS::ACMPCA::CertificateAuthority');
    assert.deepEqual(
      statements.ReadIssuedCertificates,
      allow(['acm-pca:DescribeCertificateAuthority', 'acm-pca:GetCertificate'], [`\${${ca}.Arn}`]),
    );
  });

  it('lets only AWS IoT invoke it, as this account’s certificate provider', () => {
    const { template } = synth(CONFIGS.provider);
    const fn = onlyLogicalId(template, 'AWS::Lambda::Function', 'CertificateProviderFunction');
    const permissions = template.findResources('AWS::Lambda::Permission', {
      Properties: { FunctionName: { 'Fn::GetAtt': [fn, 'Arn'] } },
    });
    assert.equal(Object.keys(permissions).length, 1, 'exactly one resource policy statement on the provider');
    const props = Object.values(permissions)[0].Properties;
    assert.equal(props.Principal, 'iot.amazonaws.com');
    assert.equal(props.Action, 'lambda:InvokeFunction');
    assert.equal(flatten(props.SourceArn), ARN.iot('certificateprovider/cvm-certificate-provider'));
    assert.deepEqual(props.SourceAccount, { Ref: 'AWS::AccountId' });
  });
});

describe('every IAM policy of every configuration', () => {
  for (const [name, context] of Object.entries(CONFIGS)) {
    it(`${name}: has no wildcard action`, () => {
      const { template } = synth(context);
      const statements = collectAllStatements(template.toJSON());
      assert.ok(statements.length > 0);
      for (const s of statements) {
        for (const action of s.actions) {
          assert.ok(!action.includes('*'), `wildcard action ${action} in ${JSON.stringify(s)}`);
        }
        assert.equal(s.effect, 'Allow');
      }
    });

    it(`${name}: grants Resource "*" only to the actions that have no resource type`, () => {
      const { template } = synth(context);
      const starActions = collectAllStatements(template.toJSON())
        .filter((s) => s.resources.includes('*'))
        .flatMap((s) => s.actions);
      for (const action of starActions) {
        assert.ok(
          [
            'iot:CreateCertificateFromCsr',
            'iot:RegisterCertificateWithoutCA',
            'iot:RegisterCertificate',
            'iot:DescribeEndpoint',
          ].includes(action),
          `${action} is granted on "*"`,
        );
      }
    });
  }
});

describe('fleet provisioning IAM', () => {
  const { template } = synth(CONFIGS.fleet);
  const table = onlyLogicalId(template, 'AWS::DynamoDB::Table');

  it('grants the pre-provisioning hook the device table and reading/deactivating certificates, nothing else', () => {
    const fn = onlyLogicalId(template, 'AWS::Lambda::Function', 'FleetProvisioningHookFunction');
    const logGroup = onlyLogicalId(template, 'AWS::Logs::LogGroup', 'FleetProvisioningHookLogGroup');
    assert.deepEqual(bySid(statementsOfRole(template, roleOf(template, fn))), {
      WriteOwnLogs: allow(['logs:CreateLogStream', 'logs:PutLogEvents'], [`\${${logGroup}.Arn}`]),
      ReadWriteDeviceRecords: allow(['dynamodb:GetItem', 'dynamodb:UpdateItem'], [`\${${table}.Arn}`]),
      DeactivateReplacedCertificates: allow(['iot:DescribeCertificate', 'iot:UpdateCertificate'], [ARN.iot('cert/*')]),
    });
  });

  it('lets only AWS IoT invoke the hook, for this account’s template', () => {
    const fn = onlyLogicalId(template, 'AWS::Lambda::Function', 'FleetProvisioningHookFunction');
    const permissions = Object.values(
      template.findResources('AWS::Lambda::Permission', { Properties: { FunctionName: { 'Fn::GetAtt': [fn, 'Arn'] } } }),
    );
    assert.equal(permissions.length, 1, 'exactly one resource policy statement on the hook');
    const props = permissions[0].Properties;
    assert.equal(props.Principal, 'iot.amazonaws.com');
    assert.equal(props.Action, 'lambda:InvokeFunction');
    assert.equal(flatten(props.SourceArn), ARN.iot('provisioningtemplate/cvm-fleet-provisioning'));
    assert.deepEqual(props.SourceAccount, { Ref: 'AWS::AccountId' });
  });

  it('gives the provisioning role exactly what the template does, no managed policy', () => {
    const role = onlyLogicalId(template, 'AWS::IAM::Role', 'FleetProvisioningProvisioningRole');
    const props = template.toJSON().Resources[role].Properties;
    assert.equal(props.ManagedPolicyArns, undefined);
    assert.deepEqual(bySid(statementsOfRole(template, role)), {
      ProvisionThings: allow(['iot:CreateThing', 'iot:DescribeThing', 'iot:UpdateThing'], [ARN.iot('thing/*')]),
      ActivateAndAttachCertificates: allow(
        [
          'iot:AttachPolicy',
          'iot:AttachPrincipalPolicy',
          'iot:AttachThingPrincipal',
          'iot:DescribeCertificate',
          'iot:UpdateCertificate',
        ],
        [ARN.iot('cert/*')],
      ),
      ReadPolicies: allow(['iot:GetPolicy'], [ARN.iot('policy/*')]),
    });
  });

  it('lets only AWS IoT of this account assume the provisioning role', () => {
    const role = onlyLogicalId(template, 'AWS::IAM::Role', 'FleetProvisioningProvisioningRole');
    const [statement] = template.toJSON().Resources[role].Properties.AssumeRolePolicyDocument.Statement;
    assert.deepEqual(statement.Principal, { Service: 'iot.amazonaws.com' });
    assert.deepEqual(statement.Condition.StringEquals, { 'aws:SourceAccount': { Ref: 'AWS::AccountId' } });
    assert.equal(flatten(statement.Condition.ArnLike['aws:SourceArn']), ARN.iot('*'));
  });
});

/** Identity policies (roles, policies, managed policies) plus the AWS IoT device policy. */
function collectAllStatements(json: { [key: string]: any }): Statement[] {
  const raw: Record<string, unknown>[] = [];
  for (const resource of Object.values(json.Resources as Record<string, { Type: string; Properties?: any }>)) {
    const p = resource.Properties ?? {};
    switch (resource.Type) {
      case 'AWS::IAM::Policy':
      case 'AWS::IAM::ManagedPolicy':
      case 'AWS::IoT::Policy':
        raw.push(...p.PolicyDocument.Statement);
        break;
      case 'AWS::IAM::Role':
        for (const policy of p.Policies ?? []) raw.push(...policy.PolicyDocument.Statement);
        break;
      default:
        break;
    }
  }
  return raw.map(normalize);
}
