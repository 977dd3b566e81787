import { setFlagsFromString } from 'node:v8';
import { fmaBuildWanted } from './wasm-simd-matmul.js';

/**
 * A module of one function using relaxed SIMD's f32x4.relaxed_madd (`() -> v128`), to ask the engine
 * whether it accepts the instruction.
 */
const RELAXED_SIMD_PROBE = new Uint8Array([
  ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00], // magic, version
  ...[0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b], // types: () -> v128
  ...[0x03, 0x02, 0x01, 0x00], // one function of type 0
  ...[0x0a, 0x3d, 0x01, 0x3b, 0x00], // code: one body of 59 bytes, no locals
  ...[0, 1, 2].flatMap(() => [0xfd, 0x0c, ...new Array<number>(16).fill(0)]), // three v128.const 0
  ...[0xfd, 0x85, 0x02, 0x0b], // f32x4.relaxed_madd, end
]);

/**
 * Let Node 20 and 21 run core's kernel build with fused multiply-adds: their V8 accepts relaxed SIMD
 * only behind `--experimental-wasm-relaxed-simd` (on by default from Node 22, V8 11.4), which this
 * sets for the process where the probe fails, unless `LORA_WASM_FMA=0` asks for the plain build. The
 * flag only makes more WebAssembly modules valid; nothing else changes.
 */
export function installNodeWasmFeatures(): void {
  const wasm = (globalThis as { WebAssembly?: { validate(bytes: Uint8Array): boolean } }).WebAssembly;
  if (wasm === undefined || !fmaBuildWanted() || wasm.validate(RELAXED_SIMD_PROBE)) return;
  setFlagsFromString('--experimental-wasm-relaxed-simd');
}
