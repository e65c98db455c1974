#!/usr/bin/env node
// Compiles the Tolk contracts with the pinned @ton/tolk-js (WASM, no native toolchain).
//
//   node scripts/compile.mjs          write build/<name>.boc (binary BoC) and build/<name>.json
//   node scripts/compile.mjs --check  compile afresh and fail if the result differs from build/
//
// The committed build/ outputs are what the Python side and the sidecar deploy, so --check
// guards against someone editing a .tolk file without rebuilding (or a compiler drift).
import { runTolkCompiler, getTolkCompilerVersion } from '@ton/tolk-js';
import { readFileSync, writeFileSync, existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash } from 'node:crypto';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const SRC = join(ROOT, 'src');
const BUILD = join(ROOT, 'build');
export const CONTRACTS = ['payment_channel', 'registry'];

export async function compileOne(name) {
  const t0 = performance.now();
  const res = await runTolkCompiler({
    entrypointFileName: `${name}.tolk`,
    fsReadCallback: (path) => readFileSync(join(SRC, path), 'utf-8'),
    optimizationLevel: 2,
  });
  if (res.status !== 'ok') {
    throw new Error(`tolk: ${name}: ${res.message}`);
  }
  if (res.stderr && res.stderr.trim()) {
    console.error(`tolk: ${name}: ${res.stderr.trim()}`);
  }
  const boc = Buffer.from(res.codeBoc64, 'base64');
  const sources = {};
  for (const s of res.sourcesSnapshot) {
    if (!s.filename.startsWith('@stdlib')) {
      sources[s.filename.replace(/^.*\//, '')] = createHash('sha256').update(s.contents).digest('hex');
    }
  }
  return {
    boc,
    meta: {
      name,
      codeHashHex: res.codeHashHex.toLowerCase(),
      codeBoc64: res.codeBoc64,
      tolkVersion: res.tolkVersion,
      compiler: '@ton/tolk-js',
      sourcesSha256: sources,
    },
    ms: performance.now() - t0,
  };
}

async function main() {
  const check = process.argv.includes('--check');
  const version = await getTolkCompilerVersion();
  let failed = false;
  if (!existsSync(BUILD)) mkdirSync(BUILD);
  for (const name of CONTRACTS) {
    const { boc, meta, ms } = await compileOne(name);
    const bocPath = join(BUILD, `${name}.boc`);
    const jsonPath = join(BUILD, `${name}.json`);
    const json = JSON.stringify(meta, null, 2) + '\n';
    if (check) {
      const ok = existsSync(bocPath) && existsSync(jsonPath)
        && readFileSync(bocPath).equals(boc) && readFileSync(jsonPath, 'utf-8') === json;
      console.log(`${ok ? 'ok  ' : 'DIFF'} ${name} ${meta.codeHashHex} (tolk ${version}, ${ms.toFixed(0)} ms)`);
      if (!ok) failed = true;
    } else {
      writeFileSync(bocPath, boc);
      writeFileSync(jsonPath, json);
      console.log(`wrote ${name} ${meta.codeHashHex} (tolk ${version}, ${ms.toFixed(0)} ms)`);
    }
  }
  if (failed) {
    console.error('build/ is stale: run `npm run build` in contracts/ and commit build/');
    process.exit(1);
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await main();
}
