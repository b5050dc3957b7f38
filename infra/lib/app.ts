import { type App, Aspects, Tags } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import type { LoadedConfig } from './config';
import { CvmStack, type CvmStackProps } from './cvm-stack';

/** Where the Lambda crates are, when not in this repository's functions/ (tests). */
export type CrateManifests = Pick<CvmStackProps, 'vendManifestPath' | 'providerManifestPath' | 'hookManifestPath'>;

/**
 * The stack of one stage, as `cdk synth` and `cdk deploy` build it: named `Cvm-<stage>`,
 * pinned to the stage's account and region when its file names them (CDK then refuses to
 * deploy it with credentials for another account), tagged, and checked by the AWS Solutions
 * rules on every synth: a new finding fails the synth until it is fixed or acknowledged with
 * a reason in lib/nag.ts.
 */
export function addStage(app: App, { config }: LoadedConfig, manifests: CrateManifests = {}): CvmStack {
  const stack = new CvmStack(app, `Cvm-${config.stage}`, {
    ...manifests,
    config,
    env: config.account ? { account: config.account, region: config.region } : undefined,
  });
  Tags.of(stack).add('project', 'certificate-vending-machine');
  Tags.of(stack).add('stage', config.stage);
  Aspects.of(app).add(new AwsSolutionsChecks({ verbose: false }));
  return stack;
}

/** One line naming the settings the command line set over the stage file, or undefined. */
export function describeOverrides({ config, overrides }: LoadedConfig): string | undefined {
  const entries = Object.entries(overrides);
  if (entries.length === 0) return undefined;
  const list = entries.map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`);
  return `stage ${config.stage}: set on the command line over stages/${config.stage}.json: ${list.join(', ')}`;
}
