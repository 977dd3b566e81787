import fc from 'fast-check';
import { isDeepStrictEqual } from 'node:util';
import { describe, expect, it } from 'vitest';
import { LoraError } from '@lora/core';
import { parseJsonl, type TextExample } from '@lora/models';

const RUNS = 1000;

/** Lines as users write them: good records, records with wrong fields, other JSON, and non-JSON text. */
const lineArbitrary = fc.oneof(
  fc.record({ text: fc.string({ maxLength: 20 }), label: fc.option(fc.oneof(fc.string({ maxLength: 5 }), fc.integer()), { nil: undefined }) }).map((record) => JSON.stringify(record)),
  fc.record({ text: fc.oneof(fc.integer(), fc.constant(null), fc.array(fc.string())), label: fc.jsonValue({ maxDepth: 1 }) }, { requiredKeys: [] }).map((record) => JSON.stringify(record)),
  fc.jsonValue({ maxDepth: 3 }).map((value) => JSON.stringify(value)),
  fc.string({ maxLength: 20 }),
  fc.constantFrom('', '   ', '{"text": broken}', '{"text": "unterminated', '\u0000', '{"text":"a"}{"text":"b"}'),
);

describe('parseJsonl (the JSONL reader of lora train --data, property-based)', () => {
  it(`rejects ${RUNS} generated files only with LoraError subclasses naming the line, and every file it accepts round-trips`, () => {
    let accepted = 0;
    fc.assert(
      fc.property(fc.array(lineArbitrary, { maxLength: 8 }), fc.constantFrom('\n', '\r\n'), (lines, newline) => {
        let examples: TextExample[];
        try {
          examples = parseJsonl(lines.join(newline), { source: 'data.jsonl' });
        } catch (error) {
          return error instanceof LoraError && /^\[@lora\/models\] data\.jsonl:\d+: /u.test(error.message) && !error.message.includes('\n');
        }
        accepted += 1;
        const written = examples.map((example) => JSON.stringify(example)).join('\n');
        return isDeepStrictEqual(parseJsonl(written, { source: 'again.jsonl' }), examples);
      }),
      { numRuns: RUNS },
    );
    expect(accepted).toBeGreaterThan(10);
    expect(accepted).toBeLessThan(RUNS);
  });
});
