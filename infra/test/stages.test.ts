import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { App } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { addStage, describeOverrides } from '../lib/app';
import { ConfigError, type StageCatalog } from '../lib/config';
import { lambdaPackages } from '../lib/paths';
import { checkCatalog, readStageCatalog, resolveConfig } from '../lib/stages';
import { hookManifest, nagFindings } from './helpers';

const INFRA = path.resolve(__dirname, '..', '..');

function catalog(stages: Record<string, Record<string, unknown>>): StageCatalog {
  return new Map(
    Object.entries(stages).map(([name, settings]) => [name, { name, path: `stages/${name}.json`, settings }]),
  );
}

const refuses = (fn: () => unknown, message: RegExp) =>
  assert.throws(fn, (error: unknown) => error instanceof ConfigError && message.test(error.message));

const temporary: string[] = [];
function tempDir(files: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cvm-stages-'));
  temporary.push(dir);
  for (const [name, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    fs.writeFileSync(path.join(dir, name), text);
  }
  return dir;
}
after(() => {
  for (const dir of temporary) fs.rmSync(dir, { recursive: true, force: true });
});

/** The stack `cdk synth -c stage=<name>` builds, without bundling. */
function synthStage(context: Record<string, unknown>) {
  const app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
  const loaded = resolveConfig((key) => context[key]);
  const stack = addStage(app, loaded, { hookManifestPath: hookManifest() });
  return { stack, loaded, template: Template.fromStack(stack) };
}

describe('the committed stages', () => {
  it('are dev and prod, and consistent with each other', () => {
    const committed = readStageCatalog();
    assert.deepEqual([...committed.keys()], ['dev', 'prod']);
    checkCatalog(committed);
  });

  it('dev: deploys where the credentials point, no termination protection, names of its own', () => {
    const { stack, loaded, template } = synthStage({ stage: 'dev' });
    assert.equal(stack.stackName, 'Cvm-dev');
    assert.equal(stack.terminationProtection, false);
    assert.ok(stack.account.startsWith('${Token'), 'dev is not pinned to an account');
    assert.equal(loaded.config.policyName, 'cvm-device-dev');
    template.hasResourceProperties('AWS::IoT::Policy', { PolicyName: 'cvm-device-dev' });
    assert.deepEqual(nagFindings(stack), []);
  });

  it('prod: pinned to its account and region, termination protection on, owns the account singletons', () => {
    const { stack, loaded, template } = synthStage({ stage: 'prod' });
    assert.equal(stack.stackName, 'Cvm-prod');
    assert.equal(stack.terminationProtection, true);
    assert.equal(stack.account, '123456789012');
    assert.equal(stack.region, 'eu-west-1');
    assert.equal(loaded.config.ownsAccountSingletons, true);
    const [vend] = Object.values(template.findResources('AWS::Lambda::Function'));
    assert.equal(vend.Properties.Environment.Variables.CVM_STAGE, 'prod');
    template.hasResourceProperties('AWS::Logs::LogGroup', { RetentionInDays: 731 });
    assert.deepEqual(nagFindings(stack), []);
  });

  it('prod may enable the certificate provider and the audit; dev may not', () => {
    const pca = 'arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/11111111-2222-3333-4444-555555555555';
    const { stack, template } = synthStage({ stage: 'prod', certificateProvider: 'true', pcaArn: pca, deviceDefenderAudit: 'true' });
    template.resourceCountIs('AWS::IoT::CertificateProvider', 1);
    template.resourceCountIs('AWS::IoT::AccountAuditConfiguration', 1);
    assert.deepEqual(nagFindings(stack), []);
    refuses(() => synthStage({ stage: 'dev', certificateProvider: 'true', pcaArn: pca }), /once per account/);
    refuses(() => synthStage({ stage: 'dev', deviceDefenderAudit: 'true' }), /once per account/);
  });

  it('prod with everything on (pinned account and region) has no unacknowledged finding', () => {
    const { stack } = synthStage({
      stage: 'prod',
      issuerMode: 'acm-pca',
      createPrivateCa: 'true',
      crl: 'true',
      certificateProvider: 'true',
      fleetProvisioning: 'true',
      deviceDefenderAudit: 'true',
    });
    assert.deepEqual(nagFindings(stack), []);
  });

  it('refuse a command-line name that would collide with another stage', () => {
    refuses(() => synthStage({ stage: 'dev', policyName: 'cvm-device-default' }), /"dev" and "prod".*policyName "cvm-device-default"/);
  });

  it('tags the stack with the project and the stage', () => {
    const { template } = synthStage({ stage: 'dev' });
    const table = Object.values(template.findResources('AWS::DynamoDB::Table'))[0];
    assert.deepEqual(
      table.Properties.Tags.filter((t: { Key: string }) => ['project', 'stage'].includes(t.Key)),
      [
        { Key: 'project', Value: 'certificate-vending-machine' },
        { Key: 'stage', Value: 'dev' },
      ],
    );
  });
});

describe('checkCatalog', () => {
  it('allows one singleton owner per account', () => {
    checkCatalog(
      catalog({
        a: { account: '111111111111', region: 'eu-west-1', ownsAccountSingletons: true },
        b: { account: '222222222222', region: 'eu-west-1', ownsAccountSingletons: true, policyName: 'p', roleAliasName: 'r' },
      }),
    );
    refuses(
      () =>
        checkCatalog(
          catalog({
            a: { account: '111111111111', region: 'eu-west-1', ownsAccountSingletons: true },
            b: { account: '111111111111', region: 'us-east-1', ownsAccountSingletons: true },
          }),
        ),
      /stages "a" and "b" both set "ownsAccountSingletons" for account 111111111111/,
    );
  });

  it('requires distinct AWS IoT names of stages that may share an account and region', () => {
    refuses(
      () => checkCatalog(catalog({ a: {}, b: { policyName: 'other' } })),
      /"a" and "b".*roleAliasName "cvm-device-role-alias"/,
    );
    refuses(
      () =>
        checkCatalog(
          catalog({
            a: { fleetProvisioning: true },
            b: { fleetProvisioning: true, policyName: 'p', roleAliasName: 'r', claimPolicyName: 'c' },
          }),
        ),
      /provisioningTemplateName "cvm-fleet-provisioning"/,
    );
    // Fleet names only matter when both stages create those resources.
    checkCatalog(catalog({ a: { fleetProvisioning: true }, b: { policyName: 'p', roleAliasName: 'r' } }));
    // Different accounts (or regions) cannot collide.
    checkCatalog(
      catalog({
        a: { account: '111111111111', region: 'eu-west-1' },
        b: { account: '222222222222', region: 'eu-west-1' },
        c: { account: '111111111111', region: 'us-east-1' },
      }),
    );
  });

  it('checks every stage file, not only the deployed one', () => {
    refuses(() => checkCatalog(catalog({ a: {}, b: { policyName: 'p', roleAliasName: 'r', validityDays: 0 } })), /validityDays/);
    refuses(() => checkCatalog(catalog({ a: { maxFailedAttempts: 3 } })), /stages\/a\.json: setting "maxFailedAttempts" was renamed/);
    refuses(() => checkCatalog(catalog({ a: { throtleRateLimit: 3 } })), /stages\/a\.json: unknown setting "throtleRateLimit"/);
  });
});

describe('readStageCatalog', () => {
  it('reads <stage>.json files and ignores other files', () => {
    const dir = tempDir({ 'qa.json': '{"logRetentionDays": 30}', 'README.md': 'not a stage' });
    const read = readStageCatalog(dir);
    assert.deepEqual([...read.keys()], ['qa']);
    assert.deepEqual(read.get('qa')?.settings, { logRetentionDays: 30 });
  });

  it('refuses invalid JSON, a non-object and a bad stage name', () => {
    refuses(() => readStageCatalog(tempDir({ 'qa.json': '{ "a": ' })), /stages\/qa\.json is not valid JSON/);
    refuses(() => readStageCatalog(tempDir({ 'qa.json': '[1]' })), /must hold one JSON object/);
    refuses(() => readStageCatalog(tempDir({ 'q_a.json': '{}' })), /stage name is a letter/);
    refuses(() => readStageCatalog(path.join(os.tmpdir(), 'cvm-no-such-dir')), /does not exist/);
  });
});

describe('describeOverrides', () => {
  it('names what the command line set over the stage file', () => {
    const loaded = resolveConfig((key) => ({ stage: 'dev', throttleRateLimit: '3' })[key]);
    assert.equal(describeOverrides(loaded), 'stage dev: set on the command line over stages/dev.json: throttleRateLimit=3');
    assert.equal(describeOverrides(resolveConfig((key) => ({ stage: 'dev' })[key])), undefined);
  });
});

describe('lambdaPackages', () => {
  const manifest = '[package]\nname = "x"\nversion = "0.0.0"\n';
  it('names the Lambda crates that exist and are workspace members', () => {
    const root = tempDir({
      'Cargo.toml': '[workspace]\nmembers = [\n  "functions/vend",\n  "functions/cert-provider",\n]\n',
      'functions/vend/Cargo.toml': manifest,
      'functions/cert-provider/Cargo.toml': manifest,
      // Present but not yet a member: naming it with -p would fail the build.
      'functions/provisioning-hook/Cargo.toml': manifest,
    });
    assert.deepEqual(lambdaPackages(root), ['vend', 'cert-provider']);
    fs.writeFileSync(
      path.join(root, 'Cargo.toml'),
      '[workspace]\nmembers = ["functions/vend", "functions/cert-provider", "functions/provisioning-hook"]\n',
    );
    assert.deepEqual(lambdaPackages(root), ['vend', 'cert-provider', 'provisioning-hook']);
  });

  it('in this repository, includes at least the vend function and the certificate provider', () => {
    const packages = lambdaPackages();
    assert.deepEqual(packages.slice(0, 2), ['vend', 'cert-provider']);
  });
});

describe('the app (bin/cvm.js)', () => {
  const run = (args: string[], context: Record<string, unknown>) =>
    spawnSync(process.execPath, [path.join(INFRA, 'dist', 'bin', 'cvm.js'), ...args], {
      cwd: INFRA,
      encoding: 'utf8',
      env: {
        ...process.env,
        CDK_CONTEXT_JSON: JSON.stringify({ 'aws:cdk:bundling-stacks': [], ...context }),
        CDK_OUTDIR: tempDir({}),
      },
    });

  it('refuses to synthesize without a stage, naming the committed ones', () => {
    const result = run([], {});
    assert.equal(result.status, 1);
    assert.match(result.stderr, /Invalid deployment settings: choose a stage with -c stage=<name>; the committed stages are: dev, prod/);
  });

  it('refuses an unknown stage', () => {
    const result = run([], { stage: 'staging' });
    assert.equal(result.status, 1);
    assert.match(result.stderr, /unknown stage "staging"/);
  });

  it('synthesizes a committed stage and reports command-line overrides', () => {
    const result = run([], { stage: 'dev', logRetentionDays: '7' });
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stderr, /stage dev: set on the command line over stages\/dev\.json: logRetentionDays=7/);
  });
});

describe('npm run synth:templates (no bundling, through the CDK CLI)', () => {
  const APP = 'node dist/bin/cvm.js --no-bundling';

  it('is the npm script reviewers run', () => {
    const scripts = JSON.parse(fs.readFileSync(path.join(INFRA, 'package.json'), 'utf8')).scripts;
    assert.match(scripts['synth:templates'], new RegExp(`cdk synth --app '${APP}'`));
  });

  it('writes the templates without building the functions', () => {
    const out = tempDir({});
    const result = spawnSync(
      path.join(INFRA, 'node_modules', '.bin', 'cdk'),
      [
        'synth',
        '--app',
        APP,
        '--quiet',
        '--no-notices',
        '--no-version-reporting',
        '--output',
        out,
        '-c',
        'stage=prod',
      ],
      { cwd: INFRA, encoding: 'utf8', env: { ...process.env, CDK_DISABLE_VERSION_CHECK: '1', CDK_DISABLE_CLI_TELEMETRY: 'true' } },
    );
    assert.equal(result.status, 0, result.stderr);
    const template = JSON.parse(fs.readFileSync(path.join(out, 'Cvm-prod.template.json'), 'utf8'));
    const functions = Object.values(template.Resources as Record<string, any>).filter((r) => r.Type === 'AWS::Lambda::Function');
    assert.equal(functions.length, 1);
    // Bundling skipped: the asset is the crate's source folder, not a built bootstrap.
    assert.equal(functions[0].Metadata['aws:asset:path'], path.join(path.dirname(INFRA), 'functions', 'vend'));
    assert.deepEqual(
      fs.readdirSync(out).filter((f) => f.startsWith('asset.')),
      [],
      'no asset was built or copied',
    );
    // The stack is the real one: the AWS Solutions checks ran and found nothing unacknowledged.
    assert.doesNotMatch(result.stderr, /AwsSolutions-/);
  });
});
