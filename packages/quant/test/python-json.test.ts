import { describe, expect, it } from 'vitest';
import { pythonFloatRepr } from '../src/python-json.js';

describe('pythonFloatRepr', () => {
  it("writes floats as Python's repr / json.dumps does", () => {
    const cases: [number, string][] = [
      [Math.fround(2.5792255), '2.579225540161133'],
      [3, '3.0'],
      [0, '0.0'],
      [-0.5, '-0.5'],
      [1e-5, '1e-05'],
      [0.0001, '0.0001'],
      [1.5e-7, '1.5e-07'],
      [1e16, '1e+16'],
      [123456789012345.6, '123456789012345.6'],
      [1234567890123456.8, '1234567890123456.8'],
      [Math.fround(0.1), '0.10000000149011612'],
    ];
    for (const [value, expected] of cases) expect(pythonFloatRepr(value)).toBe(expected);
  });
});
