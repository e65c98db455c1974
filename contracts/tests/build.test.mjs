// The committed build/ must be exactly what the pinned compiler produces from src/.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Cell } from '@ton/core';
import { compileOne, CONTRACTS } from '../scripts/compile.mjs';
import { ROOT } from '../lib/cocoon.mjs';

for (const name of CONTRACTS) {
  it(`fresh compile of ${name} reproduces the committed BoC and code hash`, async () => {
    const t0 = performance.now();
    const { boc, meta } = await compileOne(name);
    console.log(`# compiled ${name} in ${(performance.now() - t0).toFixed(0)} ms`);
    const committedBoc = readFileSync(join(ROOT, 'build', `${name}.boc`));
    const committed = JSON.parse(readFileSync(join(ROOT, 'build', `${name}.json`), 'utf-8'));
    assert.ok(committedBoc.equals(boc), 'build/*.boc is stale: run npm run build');
    assert.equal(committed.codeHashHex, meta.codeHashHex);
    assert.equal(committed.tolkVersion, meta.tolkVersion);
    assert.deepEqual(committed.sourcesSha256, meta.sourcesSha256);
    assert.equal(Cell.fromBoc(committedBoc)[0].hash().toString('hex'), committed.codeHashHex);
  });
}
