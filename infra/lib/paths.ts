import * as fs from 'node:fs';
import * as path from 'node:path';

/**
 * The repository root: the nearest folder above this file that holds both the Cargo
 * workspace manifest and the infra/ folder. Works from the sources and from dist/.
 */
export function repoRoot(start: string = __dirname): string {
  let dir = path.resolve(start);
  for (;;) {
    if (fs.existsSync(path.join(dir, 'Cargo.toml')) && fs.existsSync(path.join(dir, 'infra'))) {
      return dir;
    }
    const parent = path.dirname(dir);
    if (parent === dir) {
      throw new Error(`no Cargo workspace with an infra/ folder above ${start}`);
    }
    dir = parent;
  }
}

/** Cargo manifests of the Lambda crates, relative to the repository root. */
export const VEND_MANIFEST = path.join('functions', 'vend', 'Cargo.toml');
export const PROVIDER_MANIFEST = path.join('functions', 'cert-provider', 'Cargo.toml');
