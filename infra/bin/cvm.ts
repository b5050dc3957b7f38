#!/usr/bin/env node
import { App } from 'aws-cdk-lib';
import { addStage, describeOverrides } from '../lib/app';
import { ConfigError, type LoadedConfig } from '../lib/config';
import { resolveConfig } from '../lib/stages';

// `--no-bundling` (npm run synth:templates): synthesize the templates without building the
// Rust functions. The CDK CLI refuses user context under `aws:`, so the app sets the CLI's
// own bundling-stacks key itself, after the CLI's context (postCliContext): no stack is
// bundled, and the function assets point at the crates' sources. Such an output is for
// reading, never for deploying.
const skipBundling = process.argv.includes('--no-bundling');
const app = new App(skipBundling ? { postCliContext: { 'aws:cdk:bundling-stacks': [] } } : {});

let loaded: LoadedConfig;
try {
  loaded = resolveConfig((key) => app.node.tryGetContext(key));
  addStage(app, loaded);
} catch (error) {
  if (error instanceof ConfigError) {
    process.stderr.write(`Invalid deployment settings: ${error.message}\n`);
    process.exit(1);
  }
  throw error;
}
const overrides = describeOverrides(loaded);
if (overrides) process.stderr.write(`${overrides}\n`);
