import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  ConfigError,
  type ContextReader,
  type CvmConfig,
  type LoadedConfig,
  loadConfig,
  STAGE_NAME,
  type StageCatalog,
  type StageFile,
  stageFileConfig,
} from './config';
import { repoRoot } from './paths';

/** The committed stage files, one per deployment: infra/stages/<stage>.json. */
export function stagesDir(): string {
  return path.join(repoRoot(), 'infra', 'stages');
}

/**
 * Reads every `<stage>.json` of a folder. Each must be a JSON object; its file name (without
 * `.json`) is the stage name. Settings are not interpreted here (see `checkCatalog`).
 */
export function readStageCatalog(dir: string = stagesDir()): StageCatalog {
  const catalog = new Map<string, StageFile>();
  if (!fs.existsSync(dir)) throw new ConfigError(`no stage files: ${dir} does not exist`);
  for (const entry of fs.readdirSync(dir).sort()) {
    if (!entry.endsWith('.json')) continue;
    const name = entry.slice(0, -'.json'.length);
    const shown = path.join('stages', entry);
    if (!STAGE_NAME.test(name)) {
      throw new ConfigError(`${shown}: a stage name is a letter, then letters, digits or dashes (at most 32)`);
    }
    let settings: unknown;
    try {
      settings = JSON.parse(fs.readFileSync(path.join(dir, entry), 'utf8'));
    } catch (error) {
      throw new ConfigError(`${shown} is not valid JSON: ${(error as Error).message}`);
    }
    if (settings === null || typeof settings !== 'object' || Array.isArray(settings)) {
      throw new ConfigError(`${shown} must hold one JSON object of settings`);
    }
    catalog.set(name, { name, path: shown, settings: settings as Record<string, unknown> });
  }
  return catalog;
}

/**
 * What must hold across the committed stages, checked on every synth so that no stage can be
 * deployed while the set is inconsistent:
 *
 * - every stage file is valid on its own;
 * - at most one stage per AWS account owns the account-wide singletons. AWS allows one
 *   certificate provider per account (it takes over every fleet-provisioning
 *   CreateCertificateFromCsr of the account), and the Device Defender audit configuration is
 *   one per account: two stacks managing either would overwrite, and on deletion remove, each
 *   other's;
 * - stages that may share an account and region (same or unnamed account, same or unnamed
 *   region) use distinct names for the AWS IoT resources whose names are unique there.
 *
 * `selected` is the deployed stage's effective configuration (its file plus context), used in
 * place of its file alone.
 */
export function checkCatalog(catalog: StageCatalog, selected?: CvmConfig): void {
  const configs: CvmConfig[] = [];
  for (const file of catalog.values()) {
    const fromFile = stageFileConfig(file);
    configs.push(selected && selected.stage === file.name ? selected : fromFile);
  }

  const owners = new Map<string, string>();
  for (const config of configs) {
    if (!config.ownsAccountSingletons || !config.account) continue;
    const other = owners.get(config.account);
    if (other) {
      throw new ConfigError(
        `stages "${other}" and "${config.stage}" both set "ownsAccountSingletons" for account ${config.account}: ` +
          'AWS allows one certificate provider and one audit configuration per account, so only one stage may own them',
      );
    }
    owners.set(config.account, config.stage);
  }

  const mayShare = (a: CvmConfig, b: CvmConfig) =>
    (!a.account || !b.account || a.account === b.account) && (!a.region || !b.region || a.region === b.region);
  const uniqueNames = (c: CvmConfig): [string, string][] => [
    ['policyName', c.policyName],
    ['roleAliasName', c.roleAliasName],
    ...(c.fleetProvisioning
      ? ([
          ['provisioningTemplateName', c.provisioningTemplateName],
          ['claimPolicyName', c.claimPolicyName],
        ] as [string, string][])
      : []),
  ];
  for (let i = 0; i < configs.length; i++) {
    for (let j = i + 1; j < configs.length; j++) {
      const [a, b] = [configs[i], configs[j]];
      if (!mayShare(a, b)) continue;
      const bNames = new Map(uniqueNames(b));
      for (const [key, name] of uniqueNames(a)) {
        if (bNames.get(key) === name) {
          throw new ConfigError(
            `stages "${a.stage}" and "${b.stage}" may deploy to the same account and region and both use ` +
              `${key} "${name}": AWS IoT names are unique per account and region; give each stage its own`,
          );
        }
      }
    }
  }
}

/** The deployed stage's configuration, after checking the whole set of committed stages. */
export function resolveConfig(context: ContextReader, catalog: StageCatalog = readStageCatalog()): LoadedConfig {
  const loaded = loadConfig(context, catalog);
  checkCatalog(catalog, loaded.config);
  return loaded;
}
