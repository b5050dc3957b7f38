import * as fs from 'node:fs';
import * as path from 'node:path';
import { App, Aspects } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import { AwsSolutionsChecks } from 'cdk-nag';
import { type CvmConfig, loadConfig, type StageCatalog } from '../lib/config';
import { CvmStack } from '../lib/cvm-stack';
import { HOOK_MANIFEST, PROVIDER_MANIFEST, repoRoot } from '../lib/paths';

export const PCA_ARN = 'arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/11111111-2222-3333-4444-555555555555';
export const ACM_CERT_ARN = 'arn:aws:acm:eu-west-1:123456789012:certificate/aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee';
export const TEST_ACCOUNT = '123456789012';

/**
 * The stage the unit tests synthesize: built-in defaults, and the owner of its account's
 * singletons so that every setting can be switched on. The stack is built without `env`
 * (as the unit tests always have), so account and region stay CloudFormation references.
 */
export const TEST_STAGE = 'test';
export const TEST_CATALOG: StageCatalog = new Map([
  [
    TEST_STAGE,
    {
      name: TEST_STAGE,
      path: 'stages/test.json',
      settings: { account: TEST_ACCOUNT, region: 'eu-west-1', ownsAccountSingletons: true },
    },
  ],
]);

/** The deployment configurations whose differences matter, as CDK context over the test stage. */
export const CONFIGS: Record<string, Record<string, unknown>> = {
  default: {},
  acmPca: { issuerMode: 'acm-pca', pcaArn: PCA_ARN },
  provider: { certificateProvider: 'true', pcaArn: PCA_ARN },
  createdCa: { issuerMode: 'acm-pca', createPrivateCa: 'true', certificateProvider: 'true' },
  crl: { issuerMode: 'acm-pca', createPrivateCa: 'true', crl: 'true' },
  fleet: { fleetProvisioning: 'true' },
  audit: { deviceDefenderAudit: 'true' },
  endpointsGiven: {
    iotDataEndpoint: 'a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com',
    iotCredentialsEndpoint: 'c1d2e3f4g5h6i7.credentials.iot.eu-west-1.amazonaws.com',
  },
  customDomain: { domainName: 'cvm.example.com', certificateArn: ACM_CERT_ARN },
};

export interface Synthesized {
  readonly stack: CvmStack;
  readonly template: Template;
  readonly config: CvmConfig;
}

const cache = new Map<string, Synthesized>();

/** The settings of the test stage under a context (stage defaults to the test stage). */
export function testConfig(context: Record<string, unknown>): CvmConfig {
  return loadConfig((key) => (key === 'stage' ? (context.stage ?? TEST_STAGE) : context[key]), TEST_CATALOG).config;
}

/** The provider crate's manifest; unit tests only read its package name (no bundling). */
function providerManifest(): string {
  return path.join(repoRoot(), PROVIDER_MANIFEST);
}

/**
 * The hook crate's manifest, or a stand-in while the crate does not exist: unit tests only
 * read its package name (no bundling), so they must not depend on the crate being there.
 */
export function hookManifest(): string {
  const real = path.join(repoRoot(), HOOK_MANIFEST);
  if (fs.existsSync(real)) return real;
  return path.join(repoRoot(), 'infra', 'test', 'fixtures', 'provisioning-hook', 'Cargo.toml');
}

/** Synthesizes the stack for a configuration, with the AWS Solutions checks applied. */
export function synthConfig(config: CvmConfig, key = JSON.stringify(config)): Synthesized {
  const cached = cache.get(key);
  if (cached) return cached;
  // An empty bundling-stacks list makes CDK skip asset bundling: no cargo build in unit tests.
  const app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
  const stack = new CvmStack(app, 'CvmTest', {
    config,
    providerManifestPath: providerManifest(),
    hookManifestPath: hookManifest(),
  });
  Aspects.of(app).add(new AwsSolutionsChecks());
  const result = { stack, template: Template.fromStack(stack), config };
  cache.set(key, result);
  return result;
}

/** Synthesizes the test stage under a context, with the AWS Solutions checks applied. */
export function synth(context: Record<string, unknown>): Synthesized {
  return synthConfig(testConfig(context), `context:${JSON.stringify(context)}`);
}

/** AWS Solutions errors and warnings that were not acknowledged. */
export function nagFindings(stack: CvmStack): string[] {
  const annotations = Annotations.fromStack(stack);
  const pattern = Match.stringLikeRegexp('AwsSolutions-.*');
  return [...annotations.findError('*', pattern), ...annotations.findWarning('*', pattern)].map(
    (m) => `${m.id}: ${String(m.entry.data)}`,
  );
}

/**
 * Renders CloudFormation intrinsics as text, so ARNs can be compared as strings:
 * {Ref: X} -> ${X}, {Fn::GetAtt: [R, A]} -> ${R.A}, Fn::Join is joined.
 */
export function flatten(value: unknown): string {
  if (typeof value === 'string') return value;
  if (typeof value === 'number') return String(value);
  if (value && typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    if ('Ref' in obj) return `\${${String(obj.Ref)}}`;
    if ('Fn::GetAtt' in obj) return `\${${(obj['Fn::GetAtt'] as string[]).join('.')}}`;
    if ('Fn::Join' in obj) {
      const [sep, parts] = obj['Fn::Join'] as [string, unknown[]];
      return parts.map(flatten).join(sep);
    }
  }
  throw new Error(`cannot flatten ${JSON.stringify(value)}`);
}

export interface Statement {
  readonly sid?: string;
  readonly effect: string;
  readonly actions: string[];
  readonly resources: string[];
  readonly condition?: unknown;
}

function asArray<T>(value: T | T[] | undefined): T[] {
  if (value === undefined) return [];
  return Array.isArray(value) ? value : [value];
}

export function normalize(raw: Record<string, unknown>): Statement {
  return {
    sid: raw.Sid as string | undefined,
    effect: raw.Effect as string,
    actions: asArray(raw.Action as string | string[]).slice().sort(),
    resources: asArray(raw.Resource).map(flatten).sort(),
    condition: raw.Condition,
  };
}

/** Logical ID of the execution role of a Lambda function. */
export function roleOf(template: Template, functionLogicalId: string): string {
  const fn = template.toJSON().Resources[functionLogicalId];
  return fn.Properties.Role['Fn::GetAtt'][0];
}

/** Every identity-policy statement attached to a role: inline, AWS::IAM::Policy and customer managed. */
export function statementsOfRole(template: Template, roleLogicalId: string): Statement[] {
  const resources = template.toJSON().Resources as Record<string, { Type: string; Properties: any }>;
  const role = resources[roleLogicalId];
  const statements: Record<string, unknown>[] = [];
  for (const policy of role.Properties.Policies ?? []) statements.push(...policy.PolicyDocument.Statement);
  for (const resource of Object.values(resources)) {
    const refsRole = (list: unknown[] | undefined) =>
      (list ?? []).some((r) => (r as { Ref?: string }).Ref === roleLogicalId);
    if (
      (resource.Type === 'AWS::IAM::Policy' || resource.Type === 'AWS::IAM::ManagedPolicy') &&
      refsRole(resource.Properties.Roles)
    ) {
      statements.push(...resource.Properties.PolicyDocument.Statement);
    }
  }
  return statements.map(normalize);
}

/** Logical IDs of resources of a type whose logical ID starts with a prefix (construct path). */
export function logicalIds(template: Template, type: string, prefix = ''): string[] {
  return Object.keys(template.findResources(type)).filter((id) => id.startsWith(prefix));
}

export function onlyLogicalId(template: Template, type: string, prefix = ''): string {
  const ids = logicalIds(template, type, prefix);
  if (ids.length !== 1) throw new Error(`expected one ${type} with prefix "${prefix}", found ${ids.join(', ') || 'none'}`);
  return ids[0];
}

export const ARN = {
  iot: (resource: string) => `arn:\${AWS::Partition}:iot:\${AWS::Region}:\${AWS::AccountId}:${resource}`,
};
