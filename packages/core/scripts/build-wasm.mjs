// Rebuild the generated src/wasm-*-binary.ts files from wasm/*.c (needs clang and wasm-ld with the
// wasm32 target, e.g. Debian's `clang lld`, and llvm-objdump). Not part of `build`: the generated
// files are committed, so the package builds without a C toolchain. Run after changing a C source:
//   node scripts/build-wasm.mjs
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import v8 from 'node:v8';
import { join } from 'node:path';
// The built package's rewrite, so the check below tests the code that runs (build core first).
import { withPlainMemoryImport, withSharedMemoryImport } from '../dist/internal.js';

const root = new URL('..', import.meta.url).pathname;
// Each module: its C sources (linked into one module), the generated file, and the names of the
// two exported constants.
const modules = [
  {
    sources: ['wasm/batch-matmul.c'],
    output: 'src/wasm-batch-matmul-binary.ts',
    constant: 'BATCH_MATMUL_WASM',
    // The shared link has the two-thread entries as well; the plain-memory module is made from it at
    // run time (wasm-module.ts), so only the shared one is written.
    sharedOnly: true,
    // Also built with fused multiply-adds (relaxed SIMD, see wasm/simd-madd.h): the module used
    // where the engine accepts it, the other elsewhere.
    fma: true,
    what: 'The batched SIMD matMul module',
  },
  {
    sources: ['wasm/layer-norm.c', 'wasm/softmax.c', 'wasm/adamw.c', 'wasm/cross-entropy.c', 'wasm/dropout.c', 'wasm/reductions.c', 'wasm/low-rank.c', 'wasm/copy-blocks.c', 'wasm/dequantize.c', 'wasm/sensitivity.c', 'wasm/rotary.c'],
    output: 'src/wasm-fused-kernels-binary.ts',
    constant: 'FUSED_KERNELS_WASM',
    // No atomics: the shared link differs only in its memory import, which the package makes
    // from the plain link at run time (wasm-module.ts), so only the plain one is written.
    plainOnly: true,
    what: "The fused elementwise and copy kernels' module",
  },
];
// Node 20 validates relaxed SIMD only behind this flag (on by default from Node 22).
v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
const work = mkdtempSync(join(tmpdir(), 'lora-wasm-'));
// `-fno-builtin`: clang would turn the zero-padding loops into calls to a memset we do not link.
const common = ['--target=wasm32', '-O3', '-msimd128', '-fno-builtin', '-nostdlib', '-Wl,--no-entry', '-Wl,--import-memory', '-Wl,--strip-all'];
// Two links of the same code: tfjs's threaded build runs on a shared memory (importing it needs the
// shared flag and its 4 GiB maximum), the single-threaded SIMD build on a plain one.
const variants = {
  plain: [],
  shared: ['-matomics', '-mbulk-memory', '-Wl,--shared-memory', '-Wl,--max-memory=4294967296'],
};

// A module's sections: id and [start, end) byte offsets of each one's contents.
const sections = (bytes) => {
  const found = [];
  let offset = 8;
  const leb = () => {
    let value = 0;
    for (let shift = 0; ; shift += 7) {
      const byte = bytes[offset++];
      value |= (byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return value >>> 0;
    }
  };
  while (offset < bytes.length) {
    const id = bytes[offset++];
    const size = leb();
    found.push({ id, start: offset, end: offset + size });
    offset += size;
  }
  return found;
};

// clang 14 emits relaxed SIMD's multiply-add as the proposal's earlier f32x4.fma (0xfd 0xaf 0x01),
// which engines no longer accept; its final encoding, f32x4.relaxed_madd (0xfd 0x85 0x02), has the
// same length and takes the operands in the order wasm/simd-madd.h pushes them. Each one the
// disassembler lists is rewritten: the byte pattern must occur in the code section exactly that
// many times (no immediate that happens to contain it).
const FMA_PROTOTYPE = [0xfd, 0xaf, 0x01];
const RELAXED_MADD = [0xfd, 0x85, 0x02];
function withRelaxedMadd(bytes, disassembly) {
  const listed = (disassembly.match(/\bf32x4\.fma\b/g) ?? []).length;
  if (listed === 0) {
    if (!/relaxed_madd/.test(disassembly)) throw new Error('the FMA build has no multiply-add');
    return bytes;
  }
  const code = sections(bytes).find((section) => section.id === 10);
  if (code === undefined) throw new Error('the FMA build has no code section');
  const { start, end } = code;
  const at = [];
  for (let i = start; i + 3 <= end; i++) if (FMA_PROTOTYPE.every((byte, j) => bytes[i + j] === byte)) at.push(i);
  if (at.length !== listed) throw new Error(`the FMA build lists ${listed} f32x4.fma but its code has the byte pattern ${at.length} times`);
  const out = Buffer.from(bytes);
  for (const i of at) RELAXED_MADD.forEach((byte, j) => (out[i + j] = byte));
  return out;
}

const sectionIds = (bytes) => sections(bytes).map((section) => section.id);

// llvm-objdump is versioned on Debian (llvm-objdump-14); take the first one on the PATH.
const objdump = ['llvm-objdump', 'llvm-objdump-16', 'llvm-objdump-15', 'llvm-objdump-14'].find((name) => {
  try {
    execFileSync(name, ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
});
if (objdump === undefined) throw new Error('llvm-objdump not found (Debian: apt-get install llvm)');

try {
  for (const module of modules) {
    const encoded = {};
    const builds = Object.entries(module.fma ? { ...variants, fma: [...variants.shared, '-DLORA_FMA', '-mrelaxed-simd'] } : variants);
    for (const [name, flags] of builds) {
      const output = join(work, `${name}.wasm`);
      execFileSync('clang', [...common, ...flags, '-o', output, ...module.sources.map((source) => join(root, source))], { stdio: 'inherit' });
      let bytes = readFileSync(output);
      // The module shares the backend's memory: it must not bring data of its own (section 11) nor
      // use a stack in it (a global.get of the stack pointer would show in the disassembly).
      if (sectionIds(bytes).includes(11)) throw new Error(`${module.sources.join(' + ')} (${name}): the module has a data section`);
      const disassembly = execFileSync(objdump, ['-d', output], { encoding: 'utf8' });
      if (/global\.(get|set)/.test(disassembly)) throw new Error(`${module.sources.join(' + ')} (${name}): the module uses the stack pointer`);
      if (name === 'fma') bytes = withRelaxedMadd(bytes, disassembly);
      encoded[name] = bytes.toString('base64');
    }
    if (module.plainOnly) {
      const derived = Buffer.from(withSharedMemoryImport(Buffer.from(encoded.plain, 'base64')));
      if (!derived.equals(Buffer.from(encoded.shared, 'base64'))) throw new Error(`${module.output}: the shared link is not the plain one with a shared memory import`);
    }
    for (const link of module.fma ? ['shared', 'fma'] : module.sharedOnly ? ['shared'] : []) {
      if (!WebAssembly.validate(withPlainMemoryImport(Buffer.from(encoded[link], 'base64')))) {
        throw new Error(`${module.output} (${link}): the shared link with a plain memory import does not validate`);
      }
    }
    const links = [...(module.plainOnly ? ['plain'] : module.sharedOnly ? ['shared'] : ['plain', 'shared']), ...(module.fma ? ['fma'] : [])];
    const describe = {
      fma: `The same module with fused multiply-adds (relaxed SIMD's f32x4.relaxed_madd in its products), importing a shared memory, base64: used where the engine validates it.`,
      plain: `${module.what} importing a plain (non-shared) memory, base64${module.plainOnly ? ' (the shared-memory link is made from it at run time)' : ''}.`,
      shared: `${module.sharedOnly ? module.what : 'The same module'} importing a shared memory (tfjs's threaded WASM build), base64${module.sharedOnly ? ' (the plain-memory link is made from it at run time)' : ''}.`,
    };
    writeFileSync(
      join(root, module.output),
      `// Generated by scripts/build-wasm.mjs from ${module.sources.join(', ')}: do not edit.
${links.map((link) => `\n/** ${describe[link]} */\nexport const ${module.constant}_${link === 'fma' ? 'FMA_SHARED' : link.toUpperCase()} = '${encoded[link]}';\n`).join('')}`,
    );
    console.log(`wrote ${module.output} (${links.map((name) => `${name} ${Math.round((encoded[name].length * 3) / 4)} bytes`).join(', ')})`);
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
