import { describe, expect, it } from 'vitest';
import { decodeBase64, withPlainMemoryImport, withSharedMemoryImport } from '../src/wasm-module.js';
import { BATCH_MATMUL_WASM_SHARED } from '../src/wasm-batch-matmul-binary.js';
import { FUSED_KERNELS_WASM_PLAIN } from '../src/wasm-fused-kernels-binary.js';

/** The parts of the global WebAssembly API used here (core's tsconfig has no DOM/WebAssembly types). */
interface LinearMemory {
  readonly buffer: ArrayBuffer;
}
const WebAssembly = (
  globalThis as unknown as {
    WebAssembly: {
      Memory: new (descriptor: { initial: number; maximum?: number; shared?: boolean }) => LinearMemory;
      instantiate(bytes: Uint8Array, imports: object): Promise<{ instance: { exports: Record<string, unknown> } }>;
    };
  }
).WebAssembly;

const plain = decodeBase64(FUSED_KERNELS_WASM_PLAIN);

/** A layer norm of a row of values computed by the module instantiated on `memory` (weight 1, bias 0). */
async function layerNormOn(bytes: Uint8Array, memory: LinearMemory): Promise<number[]> {
  const { instance } = await WebAssembly.instantiate(bytes, { env: { memory } });
  const values = new Float32Array(memory.buffer, 0, 32);
  values.set([-3, -1, -0.5, 0, 0.5, 1, 3, 7]);
  values.fill(1, 8, 16);
  values.fill(0, 16, 24);
  (instance.exports['layer_norm'] as (rows: number, d: number, x: number, w: number, b: number, eps: number, y: number) => void)(1, 8, 0, 32, 64, 1e-5, 96);
  return Array.from(new Float32Array(memory.buffer, 96, 8));
}

describe('withSharedMemoryImport', () => {
  it('makes a module that imports a shared memory and computes what the plain one does', async () => {
    const shared = withSharedMemoryImport(plain);
    expect(shared.length).toBe(plain.length + 3);
    // The plain link refuses a shared memory and the rewritten one a plain memory: the import changed.
    await expect(WebAssembly.instantiate(plain, { env: { memory: new WebAssembly.Memory({ initial: 2, maximum: 65536, shared: true }) } })).rejects.toThrow();
    await expect(WebAssembly.instantiate(shared, { env: { memory: new WebAssembly.Memory({ initial: 2 }) } })).rejects.toThrow();
    const fromShared = await layerNormOn(shared, new WebAssembly.Memory({ initial: 2, maximum: 65536, shared: true }));
    const fromPlain = await layerNormOn(plain, new WebAssembly.Memory({ initial: 2 }));
    expect(fromShared).toEqual(fromPlain);
    // (3 − 0.875) / √(7.921875 + 1e-5): the values' mean and variance.
    expect(fromPlain[6]).toBeCloseTo(2.125 / Math.sqrt(7.921875 + 1e-5), 5);
  });

  it('refuses a module whose import section is not the one core builds', () => {
    // The import's field name, "memory", renamed "Memory".
    const other = Uint8Array.from(plain);
    const name = Array.from('memory', (c) => c.charCodeAt(0));
    const at = other.findIndex((_, i) => name.every((byte, j) => other[i + j] === byte));
    expect(at).toBeGreaterThan(8);
    other[at] = 'M'.charCodeAt(0);
    expect(() => withSharedMemoryImport(other)).toThrow(/unexpected import section/u);
  });
});

describe('withPlainMemoryImport', () => {
  it('undoes withSharedMemoryImport byte for byte', () => {
    expect(withPlainMemoryImport(withSharedMemoryImport(plain))).toEqual(plain);
    expect(() => withPlainMemoryImport(plain)).toThrow(/unexpected import section/u);
  });

  it('makes the batched matMul’s shared link run on a plain memory (the single-threaded backends’), with the same products', async () => {
    const shared = decodeBase64(BATCH_MATMUL_WASM_SHARED);
    const product = async (bytes: Uint8Array, memory: LinearMemory): Promise<number[]> => {
      const { instance } = await WebAssembly.instantiate(bytes, { env: { memory } });
      // [3, 5]·[5, 6] at byte 0 and 64, C at 256, scratch at 512.
      new Float32Array(memory.buffer, 0, 15).set(Array.from({ length: 15 }, (_, i) => i - 7));
      new Float32Array(memory.buffer, 64, 30).set(Array.from({ length: 30 }, (_, i) => (i % 4) - 1.5));
      const batchMatMul = instance.exports['batch_matmul'] as (...args: number[]) => void;
      batchMatMul(1, 3, 5, 6, 0, 0, 5, 1, 64, 0, 6, 1, 256, 512);
      return Array.from(new Float32Array(memory.buffer, 256, 18));
    };
    await expect(WebAssembly.instantiate(shared, { env: { memory: new WebAssembly.Memory({ initial: 2 }) } })).rejects.toThrow();
    const onPlain = await product(withPlainMemoryImport(shared), new WebAssembly.Memory({ initial: 2 }));
    const onShared = await product(shared, new WebAssembly.Memory({ initial: 2, maximum: 65536, shared: true }));
    expect(onPlain).toEqual(onShared);
    // Row 0 of A is −7..−3, column 0 of B is −1.5, 0.5, −0.5, 1.5, −1.5 (B[p][j] = ((6p + j) mod 4) − 1.5).
    const expected = [-7, -6, -5, -4, -3].reduce((sum, a, p) => sum + a * ((((6 * p) % 4) - 1.5)), 0);
    expect(onPlain[0]).toBeCloseTo(expected, 5);
  });
});
