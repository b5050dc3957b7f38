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
export const HOOK_MANIFEST = path.join('functions', 'provisioning-hook', 'Cargo.toml');

/** The Cargo package of each Lambda crate (the package name and its binary name are the same). */
const LAMBDA_PACKAGES: [manifest: string, packageName: string][] = [
  [VEND_MANIFEST, 'vend'],
  [PROVIDER_MANIFEST, 'cert-provider'],
  [HOOK_MANIFEST, 'provisioning-hook'],
];

/**
 * The Lambda packages present in the workspace. Every function's release build names all of
 * them (`-p` each), whichever function it builds: Cargo then resolves one feature set for the
 * dependencies they share (tokio, serde, the AWS SDK crates, ...), so those compile once into
 * the workspace's target directory and every later function build reuses them. Built one
 * package at a time, each function would unify features over its own dependencies only, and
 * any difference (tokio's io-std, serde's alloc) would recompile everything above it.
 */
export function lambdaPackages(root: string = repoRoot()): string[] {
  const members = workspaceMembers(root);
  return LAMBDA_PACKAGES.filter(
    ([manifest]) => fs.existsSync(path.join(root, manifest)) && members.includes(path.dirname(manifest).split(path.sep).join('/')),
  ).map(([, name]) => name);
}

/**
 * The `members` of the root Cargo.toml's [workspace] (plain paths, as this repository lists
 * them). A crate folder that exists but is not a member yet is left out: `-p` would fail.
 */
function workspaceMembers(root: string): string[] {
  const manifest = fs.readFileSync(path.join(root, 'Cargo.toml'), 'utf8');
  const list = /^\s*members\s*=\s*\[([^\]]*)\]/m.exec(manifest)?.[1] ?? '';
  return [...list.matchAll(/"([^"]+)"/g)].map((m) => m[1]);
}
