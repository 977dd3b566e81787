// Sum vitest's per-package "Tests  N passed | M failed | K skipped (T)" lines into one closing line.
import { readFileSync } from 'node:fs';

const text = readFileSync(process.argv[2], 'utf8').replace(/\x1b\[[0-9;]*m/gu, '');
let passed = 0;
let failed = 0;
let skipped = 0;
for (const line of text.split('\n')) {
  const match = /Tests\s+(.*)\(\d+\)\s*$/u.exec(line);
  if (!match) continue;
  passed += Number(/(\d+) passed/u.exec(match[1])?.[1] ?? 0);
  failed += Number(/(\d+) failed/u.exec(match[1])?.[1] ?? 0);
  skipped += Number(/(\d+) skipped/u.exec(match[1])?.[1] ?? 0);
}
console.log(`tests: ${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
