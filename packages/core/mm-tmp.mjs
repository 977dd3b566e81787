import os from 'node:os';
import { createRequire } from 'node:module';
const require = createRequire(process.cwd() + '/package.json');
const tf = await import('@tensorflow/tfjs-core');
const wasm = await import('@tensorflow/tfjs-backend-wasm');
const pkgJson = require.resolve('@tensorflow/tfjs-backend-wasm/package.json');
const threads = Number(process.argv[2] ?? 2);
const src = String.raw`
import { createRequire } from 'node:module';
const require = createRequire(${JSON.stringify(pkgJson)});
const { wasmWorkerContents } = require('./wasm-out/tfjs-backend-wasm-threaded-simd.worker.js');
const mainScript = require.resolve('./wasm-out/tfjs-backend-wasm-threaded-simd.js');
globalThis.require = require; globalThis.__filename = mainScript;
URL.createObjectURL = () => mainScript; URL.revokeObjectURL = () => {};
(0, eval)(wasmWorkerContents.replace(/\n/g, '\\n'));
`;
const workerUrl = new URL('data:text/javascript;base64,' + Buffer.from(src).toString('base64'));
const original = URL.createObjectURL;
URL.createObjectURL = (o) => (o instanceof Blob && o.type === 'application/javascript' ? workerUrl : original(o));
if (threads > 1) tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', true);
wasm.setThreadsCount(threads);
const realCpus = os.cpus; const real = realCpus.call(os); os.cpus = () => Array.from({length: 2*threads}, (_, i) => real[i % real.length]);
await tf.setBackend(process.argv[3] ?? 'wasm'); await tf.ready();
URL.createObjectURL = original; os.cpus = realCpus;
function bench(label, f, flops) { for (let i=0;i<2;i++) tf.tidy(f); const reps=5; const t=performance.now(); for (let i=0;i<reps;i++){ const r=tf.tidy(f); r.dataSync(); r.dispose();} const ms=(performance.now()-t)/reps; console.log(label.padEnd(40), ms.toFixed(2)+'ms', (flops/ms/1e6).toFixed(1), 'GFLOP/s'); }
const n=1024; const A=tf.randomNormal([n,n]), B=tf.randomNormal([n,n]);
bench('1024 nn', () => tf.matMul(A,B), 2*n**3);


const X=tf.randomNormal([1024,256]), W=tf.randomNormal([256,768]), G=tf.randomNormal([1024,768]);
bench('x[1024,256]·W[256,768] nn', () => tf.matMul(X,W), 2*1024*256*768);
bench('g[1024,768]·Wᵀ nt', () => tf.matMul(G,W,false,true), 2*1024*256*768);
bench('xᵀ·g tn (weight grad)', () => tf.matMul(X,G,true,false), 2*1024*256*768);
const Q=tf.randomNormal([32,128,64]), K=tf.randomNormal([32,128,64]);
bench('batched q·kᵀ [32,128,64]', () => tf.matMul(Q,K,false,true), 2*32*128*128*64);
const Wt = tf.randomNormal([768,256]);
bench('x·Wtᵀ (fused, transposeB)', () => tf.fused.matMul({a:X,b:Wt,transposeB:true}), 2*1024*256*768);
bench('transpose W then nn', () => tf.matMul(G, tf.transpose(W)), 2*1024*256*768);
bench('transpose X then nn', () => tf.matMul(tf.transpose(X), G), 2*1024*256*768);
bench('batched via loop of 2D nn', () => { const kt = tf.transpose(K,[0,2,1]); const qs = tf.unstack(Q), ks = tf.unstack(kt); return tf.stack(qs.map((q,i)=>tf.matMul(q,ks[i]))); }, 2*32*128*128*64);
const Q2=tf.randomNormal([32,128,128]), V=tf.randomNormal([32,128,64]);
bench('batched att·v nn [32,128,128]x[32,128,64]', () => tf.matMul(Q2,V), 2*32*128*128*64);
bench('att·v via loop', () => { const qs = tf.unstack(Q2), ks = tf.unstack(V); return tf.stack(qs.map((q,i)=>tf.matMul(q,ks[i]))); }, 2*32*128*128*64);
