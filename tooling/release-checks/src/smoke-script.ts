// The JavaScript a new user would write against the public API, generated as ESM and as CJS from
// one body: set up the runtime, apply an adapter, take one training step, save the adapter, load it
// into a fresh base, and require the same outputs. It prints one JSON line; any failure exits 1.

/** What differs between the packages under test; every field is JavaScript source. */
export interface SmokeSpec {
  /** Local name → module specifier, e.g. `{ dora: '@lora/dora' }` (tf, core, fs, os and path are always there). */
  readonly imports: Readonly<Record<string, string>>;
  /** Statements that start the tensor runtime (default `await core.initRuntime();`). */
  readonly runtime?: string;
  /** An async function expression returning a fresh base model (default: a two-layer network `Net`). */
  readonly makeBase?: string;
  /** Expression for the plugins given to `core.createLoraRegistry`. */
  readonly plugins: string;
  /** Expression for the options given to `core.AdapterModel.create` besides the registry. */
  readonly create: string;
  /** Expression for the model input (default: a seeded [16, 64] normal tensor). */
  readonly input?: string;
  /** Arrow function `(peft, x) => output`: one forward pass (default `peft.model.forward(x)`; HyperLoRA passes a condition). */
  readonly forward?: string;
  /** Arrow function `(model, x, forward) => scalar loss` (default: mean squared error of `forward(x)` to a seeded target). */
  readonly loss?: string;
  /** Async arrow function `(peft, directory) => …` that saves (default `core.saveAdapter`). */
  readonly save?: string;
  /** Async arrow function `(directory) => AdapterModel` that loads into a fresh base (default `core.loadAdapterModel`). */
  readonly reload?: string;
}

/** Largest difference allowed between the trained model's output and the reloaded one's (float32 round trip of the same tensors). */
export const RELOAD_TOLERANCE = 1e-6;

const DEFAULT_BASE = `async () => {
    class Net extends core.Module {
      constructor(seed) {
        super();
        this.fc1 = this.registerModule('fc1', new core.Linear({ inFeatures: 64, outFeatures: 64, seed }));
        this.fc2 = this.registerModule('fc2', new core.Linear({ inFeatures: 64, outFeatures: 8, seed: seed + 1 }));
      }
      forward(x) {
        return tf.tidy(() => this.fc2.forward(tf.relu(this.fc1.forward(x))));
      }
    }
    return new Net(1);
  }`;

function body(spec: SmokeSpec): string {
  return `
async function main() {
  ${spec.runtime ?? 'await core.initRuntime();'}
  const makeBase = ${spec.makeBase ?? DEFAULT_BASE};
  const registry = core.createLoraRegistry({ plugins: ${spec.plugins} });
  const x = ${spec.input ?? "tf.randomNormal([16, 64], 0, 1, 'float32', 1)"};
  const forwardOf = ${spec.forward ?? '(peft, input) => peft.model.forward(input)'};
  const lossOf = ${spec.loss ?? "(model, input, forward) => tf.tidy(() => tf.mean(tf.square(tf.sub(forward(input), tf.randomNormal([16, 8], 0, 1, 'float32', 2)))))"};
  const save = ${spec.save ?? '(peft, directory) => core.saveAdapter(peft, directory)'};
  const reload = ${spec.reload ?? 'async (directory) => core.loadAdapterModel(await makeBase(), directory, { registry })'};
  const maxAbs = (a, b) => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]);

  const peft = core.AdapterModel.create(await makeBase(), { registry, ...${spec.create} });
  const before = forwardOf(peft, x);
  // The AdapterModel itself: it brings its adapters' hooks and adapter-level variables (a HyperLoRA's generator).
  const result = await core.train({
    model: peft,
    trainData: [null],
    steps: 1,
    learningRate: 1e-2,
    lossFn: () => lossOf(peft.model, x, (input) => forwardOf(peft, input)),
  });
  const after = forwardOf(peft, x);
  const moved = maxAbs(after, before);
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-smoke-'));
  await save(peft, directory);
  const reloaded = await reload(directory);
  const reloadDifference = maxAbs(forwardOf(reloaded, x), after);
  const summary = { backend: tf.getBackend(), loss: result.losses[0], moved, reloadDifference, files: fs.readdirSync(directory).sort() };
  console.log(JSON.stringify(summary));
  if (!Number.isFinite(result.losses[0])) throw new Error('the training step gave a non-finite loss');
  if (!(moved > 0)) throw new Error('one training step did not change the adapted model output');
  if (!(reloadDifference <= ${RELOAD_TOLERANCE})) throw new Error('the reloaded adapter gives different outputs: ' + reloadDifference);
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error && error.stack ? error.stack : String(error));
    process.exit(1);
  },
);
`;
}

const ALWAYS: Readonly<Record<string, string>> = {
  tf: '@tensorflow/tfjs-core',
  core: '@lora/core',
  fs: 'node:fs',
  os: 'node:os',
  path: 'node:path',
};

/** The smoke script as an ES module (`.mjs`), importing each package as a namespace. */
export function smokeScriptEsm(spec: SmokeSpec): string {
  const imports = Object.entries({ ...ALWAYS, ...spec.imports })
    .map(([name, specifier]) => `import * as ${name} from '${specifier}';`)
    .join('\n');
  return `${imports}\n${body(spec)}`;
}

/** The smoke script as CommonJS (`.cjs`), requiring each package. */
export function smokeScriptCjs(spec: SmokeSpec): string {
  const requires = Object.entries({ ...ALWAYS, ...spec.imports })
    .map(([name, specifier]) => `const ${name} = require('${specifier}');`)
    .join('\n');
  return `'use strict';\n${requires}\n${body(spec)}`;
}
