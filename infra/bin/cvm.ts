#!/usr/bin/env node
import { App, Aspects, Tags } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { ConfigError, loadConfig } from '../lib/config';
import { CvmStack } from '../lib/cvm-stack';

const app = new App();

let config;
try {
  config = loadConfig((key) => app.node.tryGetContext(key));
} catch (error) {
  if (error instanceof ConfigError) {
    process.stderr.write(`Invalid deployment settings: ${error.message}\n`);
    process.exit(1);
  }
  throw error;
}

const stack = new CvmStack(app, `Cvm-${config.stage}`, { config });
Tags.of(stack).add('project', 'certificate-vending-machine');
Tags.of(stack).add('stage', config.stage);

// The AWS Solutions rules run on every synth: a new finding fails `cdk synth` and
// `cdk deploy` until it is fixed or acknowledged with a reason in lib/nag.ts.
Aspects.of(app).add(new AwsSolutionsChecks({ verbose: false }));
