import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Match } from 'aws-cdk-lib/assertions';
import { ACCESS_LOG_FIELDS, ROUTE_PATHS } from '../lib/vending-api';
import { ARN, CONFIGS, flatten, onlyLogicalId, synth, TEST_STAGE } from './helpers';

describe('device table', () => {
  const { template } = synth(CONFIGS.default);

  it('is keyed by serial, on demand, with PITR, AWS-managed encryption and deletion protection', () => {
    template.resourceCountIs('AWS::DynamoDB::Table', 1);
    template.hasResourceProperties('AWS::DynamoDB::Table', {
      KeySchema: [{ AttributeName: 'serial', KeyType: 'HASH' }],
      AttributeDefinitions: [{ AttributeName: 'serial', AttributeType: 'S' }],
      BillingMode: 'PAY_PER_REQUEST',
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      SSESpecification: { SSEEnabled: true, KMSMasterKeyId: Match.absent(), SSEType: Match.absent() },
      DeletionProtectionEnabled: true,
      TimeToLiveSpecification: Match.absent(),
    });
  });

  it('is retained when the stack is deleted or the table replaced', () => {
    template.hasResource('AWS::DynamoDB::Table', { DeletionPolicy: 'Retain', UpdateReplacePolicy: 'Retain' });
  });
});

describe('vend function', () => {
  const { template } = synth(CONFIGS.default);
  const table = onlyLogicalId(template, 'AWS::DynamoDB::Table');
  const logGroup = onlyLogicalId(template, 'AWS::Logs::LogGroup', 'VendLogGroup');

  it('runs the Rust binary on provided.al2023, arm64, 256 MB, 10 s, JSON logs and system logs at INFO', () => {
    template.hasResourceProperties('AWS::Lambda::Function', {
      Runtime: 'provided.al2023',
      Handler: 'bootstrap',
      Architectures: ['arm64'],
      MemorySize: 256,
      Timeout: 10,
      ReservedConcurrentExecutions: 10,
      // System logs at INFO keep the REPORT lines (duration, memory, init duration).
      LoggingConfig: { LogFormat: 'JSON', ApplicationLogLevel: 'INFO', SystemLogLevel: 'INFO', LogGroup: { Ref: logGroup } },
    });
  });

  it('is the only function by default (no certificate provider, no helper functions)', () => {
    template.resourceCountIs('AWS::Lambda::Function', 1);
    template.resourceCountIs('AWS::IoT::CertificateProvider', 0);
    template.resourceCountIs('AWS::ACMPCA::CertificateAuthority', 0);
  });

  it('gets exactly the environment the Rust code reads', () => {
    const fn = template.toJSON().Resources[onlyLogicalId(template, 'AWS::Lambda::Function', 'VendFunction')];
    assert.deepEqual(fn.Properties.Environment.Variables, {
      CVM_TABLE_NAME: { Ref: table },
      CVM_ISSUER: 'iot',
      CVM_DEFAULT_POLICY_NAME: 'cvm-device-default',
      CVM_LOCKOUT_FREE_ATTEMPTS: '5',
      CVM_LOCKOUT_MAX_SECONDS: '900',
      CVM_RENEWAL_GRACE_HOURS: '168',
      CVM_RENEWAL_EXPIRED_GRACE_DAYS: '30',
      CVM_ROLE_ALIAS: 'cvm-device-role-alias',
      CVM_STAGE: TEST_STAGE,
    });
  });

  it('logs to its own log group with a retention', () => {
    template.hasResourceProperties('AWS::Logs::LogGroup', { RetentionInDays: 365 });
    template.hasResource('AWS::Logs::LogGroup', { DeletionPolicy: 'Retain' });
    const groups = template.findResources('AWS::Logs::LogGroup');
    for (const [id, group] of Object.entries(groups)) {
      assert.equal(group.Properties.RetentionInDays, 365, `${id} has no retention`);
    }
  });

  it('follows the architecture and concurrency settings', () => {
    const t = synth({ architecture: 'x86_64', vendReservedConcurrency: '4', logRetentionDays: '30' }).template;
    t.hasResourceProperties('AWS::Lambda::Function', { Architectures: ['x86_64'], ReservedConcurrentExecutions: 4 });
    t.hasResourceProperties('AWS::Logs::LogGroup', { RetentionInDays: 30 });
    const unreserved = synth({ vendReservedConcurrency: 'none' }).template;
    unreserved.hasResourceProperties('AWS::Lambda::Function', { ReservedConcurrentExecutions: Match.absent() });
  });
});

describe('vending API', () => {
  const { template } = synth(CONFIGS.default);

  it('is an HTTP API with exactly three routes: vend, renewal and its confirmation', () => {
    template.resourceCountIs('AWS::ApiGatewayV2::Api', 1);
    template.hasResourceProperties('AWS::ApiGatewayV2::Api', { ProtocolType: 'HTTP' });
    const routes = Object.values(template.findResources('AWS::ApiGatewayV2::Route'));
    assert.deepEqual(routes.map((r) => r.Properties.RouteKey).sort(), [
      'POST /v1/certificates',
      'POST /v1/renewals',
      'POST /v1/renewals/confirm',
    ]);
    assert.deepEqual([...ROUTE_PATHS], ['/v1/certificates', '/v1/renewals', '/v1/renewals/confirm']);
  });

  it('proxies every route to the vend function with payload format 2.0', () => {
    const fn = onlyLogicalId(template, 'AWS::Lambda::Function', 'VendFunction');
    template.resourceCountIs('AWS::ApiGatewayV2::Integration', 1);
    const integration = onlyLogicalId(template, 'AWS::ApiGatewayV2::Integration');
    template.hasResourceProperties('AWS::ApiGatewayV2::Integration', {
      IntegrationType: 'AWS_PROXY',
      PayloadFormatVersion: '2.0',
      IntegrationUri: { 'Fn::GetAtt': [fn, 'Arn'] },
    });
    for (const route of Object.values(template.findResources('AWS::ApiGatewayV2::Route'))) {
      assert.equal(flatten(route.Properties.Target), `integrations/\${${integration}}`);
    }
    // API Gateway may invoke the function for these three routes, each by its own source ARN.
    const sources = Object.values(
      template.findResources('AWS::Lambda::Permission', { Properties: { Principal: 'apigateway.amazonaws.com' } }),
    ).map((p) => flatten(p.Properties.SourceArn).replace(/^.*\/\*\/\*/, ''));
    assert.deepEqual(sources.sort(), ['/v1/certificates', '/v1/renewals', '/v1/renewals/confirm']);
  });

  it('throttles the default stage at 10 requests/s with a burst of 20', () => {
    template.resourceCountIs('AWS::ApiGatewayV2::Stage', 1);
    template.hasResourceProperties('AWS::ApiGatewayV2::Stage', {
      StageName: '$default',
      AutoDeploy: true,
      DefaultRouteSettings: { ThrottlingRateLimit: 10, ThrottlingBurstLimit: 20 },
    });
  });

  it('follows the throttle settings', () => {
    synth({ throttleRateLimit: '3', throttleBurstLimit: '6' }).template.hasResourceProperties(
      'AWS::ApiGatewayV2::Stage',
      { DefaultRouteSettings: { ThrottlingRateLimit: 3, ThrottlingBurstLimit: 6 } },
    );
  });

  it('writes JSON access logs without body, query string or headers carrying secrets', () => {
    const accessLogs = onlyLogicalId(template, 'AWS::Logs::LogGroup', 'ApiAccessLogs');
    const stage = Object.values(template.findResources('AWS::ApiGatewayV2::Stage'))[0];
    const settings = stage.Properties.AccessLogSettings;
    assert.deepEqual(settings.DestinationArn, { 'Fn::GetAtt': [accessLogs, 'Arn'] });
    const format = JSON.parse(settings.Format);
    assert.deepEqual(format, ACCESS_LOG_FIELDS);
    for (const key of ['requestId', 'ip', 'routeKey', 'status', 'responseLatency', 'integrationError']) {
      assert.ok(format[key]?.startsWith('$context.'), `access log lacks ${key}`);
    }
    assert.doesNotMatch(settings.Format, /requestBody|body|querystring|queryString|path|authorization/i);
  });

  it('does not enable CORS or a custom domain by default', () => {
    template.hasResourceProperties('AWS::ApiGatewayV2::Api', {
      CorsConfiguration: Match.absent(),
      DisableExecuteApiEndpoint: false,
    });
    template.resourceCountIs('AWS::ApiGatewayV2::DomainName', 0);
  });

  it('serves a custom domain over TLS 1.2 and closes the execute-api endpoint', () => {
    const t = synth(CONFIGS.customDomain).template;
    t.hasResourceProperties('AWS::ApiGatewayV2::DomainName', {
      DomainName: 'cvm.example.com',
      DomainNameConfigurations: [
        Match.objectLike({ CertificateArn: CONFIGS.customDomain.certificateArn, SecurityPolicy: 'TLS_1_2' }),
      ],
    });
    t.resourceCountIs('AWS::ApiGatewayV2::ApiMapping', 1);
    t.hasResourceProperties('AWS::ApiGatewayV2::Api', { DisableExecuteApiEndpoint: true });
    t.hasOutput('ApiUrl', { Value: 'https://cvm.example.com/' });
    t.hasOutput('ApiDomainTarget', {});
  });
});

describe('AWS IoT device identity', () => {
  const { template } = synth(CONFIGS.default);
  const roleAlias = onlyLogicalId(template, 'AWS::IoT::RoleAlias');

  it('creates a least-privilege device policy keyed on the thing name', () => {
    const policies = Object.values(template.findResources('AWS::IoT::Policy'));
    assert.equal(policies.length, 1);
    assert.equal(policies[0].Properties.PolicyName, 'cvm-device-default');
    const statements = policies[0].Properties.PolicyDocument.Statement.map((s: any) => ({
      ...s,
      Resource: flatten(s.Resource),
    }));
    assert.deepEqual(statements, [
      {
        Sid: 'ConnectAsOwnThing',
        Effect: 'Allow',
        Action: 'iot:Connect',
        Resource: ARN.iot('client/${iot:Connection.Thing.ThingName}'),
        Condition: { Bool: { 'iot:Connection.Thing.IsAttached': 'true' } },
      },
      {
        Sid: 'MessagesOnOwnTopics',
        Effect: 'Allow',
        Action: ['iot:Publish', 'iot:Receive'],
        Resource: ARN.iot('topic/things/${iot:Connection.Thing.ThingName}/*'),
      },
      {
        Sid: 'SubscribeToOwnTopics',
        Effect: 'Allow',
        Action: 'iot:Subscribe',
        Resource: ARN.iot('topicfilter/things/${iot:Connection.Thing.ThingName}/*'),
      },
      {
        Sid: 'ExchangeCertificateForCredentials',
        Effect: 'Allow',
        Action: 'iot:AssumeRoleWithCertificate',
        Resource: `\${${roleAlias}.RoleAliasArn}`,
      },
    ]);
  });

  it('names the policy from context', () => {
    synth({ policyName: 'fleet-a' }).template.hasResourceProperties('AWS::IoT::Policy', { PolicyName: 'fleet-a' });
  });

  it('creates a role alias for a role that trusts only the credentials provider, for this alias, and grants nothing', () => {
    const role = template.toJSON().Resources[roleAlias].Properties.RoleArn['Fn::GetAtt'][0];
    template.hasResourceProperties('AWS::IoT::RoleAlias', {
      RoleAlias: 'cvm-device-role-alias',
      CredentialDurationSeconds: 3600,
    });
    const roleProps = template.toJSON().Resources[role].Properties;
    const statements = roleProps.AssumeRolePolicyDocument.Statement;
    assert.equal(statements.length, 1);
    const [trust] = statements;
    assert.deepEqual(
      { ...trust, Condition: undefined },
      { Action: 'sts:AssumeRole', Effect: 'Allow', Principal: { Service: 'credentials.iot.amazonaws.com' }, Condition: undefined },
    );
    // Confused-deputy protection: only on behalf of this account's role alias of that name.
    assert.deepEqual(trust.Condition.StringEquals, { 'aws:SourceAccount': { Ref: 'AWS::AccountId' } });
    assert.deepEqual(Object.keys(trust.Condition).sort(), ['ArnEquals', 'StringEquals']);
    assert.equal(flatten(trust.Condition.ArnEquals['aws:SourceArn']), ARN.iot('rolealias/cvm-device-role-alias'));
    assert.equal(roleProps.ManagedPolicyArns, undefined);
    assert.equal(roleProps.Policies, undefined);
    const attached = template.findResources('AWS::IAM::Policy', { Properties: { Roles: [{ Ref: role }] } });
    assert.deepEqual(attached, {});
  });

  it('attaches the managed policies the operator names to the device role', () => {
    const arn = 'arn:aws:iam::123456789012:policy/device-telemetry';
    synth({ deviceRoleManagedPolicyArns: arn, credentialDurationSeconds: '7200' }).template.hasResourceProperties(
      'AWS::IAM::Role',
      {
        AssumeRolePolicyDocument: Match.objectLike({
          Statement: [Match.objectLike({ Principal: { Service: 'credentials.iot.amazonaws.com' } })],
        }),
        ManagedPolicyArns: [arn],
        MaxSessionDuration: 7200,
      },
    );
  });
});

describe('outputs', () => {
  it('names the API URL, table, endpoints and dashboard', () => {
    const { template } = synth(CONFIGS.default);
    const table = onlyLogicalId(template, 'AWS::DynamoDB::Table');
    const outputs = template.toJSON().Outputs;
    assert.match(flatten(outputs.ApiUrl.Value), /^https:\/\/\$\{ApiHttpApi[0-9A-F]+\}\.execute-api\.\$\{AWS::Region\}\./);
    assert.deepEqual(outputs.TableName.Value, { Ref: table });
    assert.match(outputs.IotDataEndpoint.Value, /DescribeEndpoint/);
    assert.match(outputs.IotCredentialsEndpoint.Value, /DescribeEndpoint/);
    assert.match(flatten(outputs.DashboardUrl.Value), /cloudwatch\/home\?region=\$\{AWS::Region\}#dashboards:name=\$\{MonitoringDashboard/);
  });

  it('repeats the configured endpoints', () => {
    const { template } = synth(CONFIGS.endpointsGiven);
    template.hasOutput('IotDataEndpoint', { Value: CONFIGS.endpointsGiven.iotDataEndpoint });
    template.hasOutput('IotCredentialsEndpoint', { Value: CONFIGS.endpointsGiven.iotCredentialsEndpoint });
  });
});
