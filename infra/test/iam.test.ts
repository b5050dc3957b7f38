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

const allow = (actions: string[], resources: string[]) => ({
  effect: 'Allow',
  actions: [...actions].sort(),
  resources: [...resources].sort(),
  condition: undefined,
});

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
      IssueWithPrivateCa: allow(
        [
          'acm-pca:DescribeCertificateAuthority',
          'acm-pca:GetCertificate',
          'acm-pca:IssueCertificate',
          'acm-pca:RevokeCertificate',
        ],
        [PCA_ARN],
      ),
      RegisterPrivateCaCertificate: allow(['iot:RegisterCertificateWithoutCA'], ['*']),
      ManageVendedCertificates: allow([...CERT_ACTIONS, 'iot:DescribeCertificate'], [ARN.iot('cert/*')]),
      CreateThings: allow(['iot:CreateThing'], [ARN.iot('thing/*')]),
      DiscoverIotEndpoints: allow(['iot:DescribeEndpoint'], ['*']),
    });
  });

  it('signs with the created Private CA when createPrivateCa=true', () => {
    const { template, statements } = vendStatements(CONFIGS.createdCa);
    const ca = onlyLogicalId(template, 'AWS::ACMPCA::CertificateAuthority');
    assert.deepEqual(statements.IssueWithPrivateCa?.resources, [`\${${ca}.Arn}`]);
  });

  it('drops iot:DescribeEndpoint when both endpoints are configured', () => {
    const { statements } = vendStatements(CONFIGS.endpointsGiven);
    assert.equal(statements.DiscoverIotEndpoints, undefined);
    assert.deepEqual(Object.keys(statements).sort(), [
      'CreateThings',
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
      statements.IssueWithPrivateCa,
      allow(
        [
          'acm-pca:DescribeCertificateAuthority',
          'acm-pca:GetCertificate',
          'acm-pca:GetCertificateAuthorityCertificate',
          'acm-pca:IssueCertificate',
          'acm-pca:RevokeCertificate',
        ],
        [PCA_ARN],
      ),
    );
  });
});

describe('certificate provider IAM', () => {
  it('grants only the three Private CA calls, on the CA', () => {
    const { template, statements } = providerStatements(CONFIGS.provider);
    const logGroup = onlyLogicalId(template, 'AWS::Logs::LogGroup', 'CertificateProviderLogGroup');
    assert.deepEqual(statements, {
      WriteOwnLogs: allow(['logs:CreateLogStream', 'logs:PutLogEvents'], [`\${${logGroup}.Arn}`]),
      SignWithPrivateCa: allow(
        ['acm-pca:DescribeCertificateAuthority', 'acm-pca:GetCertificate', 'acm-pca:IssueCertificate'],
        [PCA_ARN],
      ),
    });
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
