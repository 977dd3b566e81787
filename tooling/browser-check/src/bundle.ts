// Bundle a script for the browser with esbuild, as an app would, and name every Node built-in the
// bundle would need. esbuild cannot resolve `node:fs` & co. for `platform: 'browser'` (unless a
// package's `browser` field maps it away, which is the intended escape), so each shows up as a
// resolve error naming the importer; one marked external would show up in the metafile instead.
import { isBuiltin } from 'node:module';
import { build, type Message, type Metafile } from 'esbuild';

/** A Node built-in the bundle needs, and the file that imports it. */
export interface NodeBuiltinImport {
  readonly specifier: string;
  readonly importer: string;
}

/** What {@link bundleForBrowser} produced. */
export interface BrowserBundle {
  /** The bundled script (an ES module), or null when the build failed. */
  readonly code: string | null;
  /** Node built-ins the entry reaches (empty for a browser-ready bundle). */
  readonly nodeBuiltins: readonly NodeBuiltinImport[];
  /** Other build errors, formatted. */
  readonly errors: readonly string[];
  /** Files bundled, relative to the working directory. */
  readonly inputs: readonly string[];
}

const RESOLVE_ERROR = /^Could not resolve "([^"]+)"/u;

function builtinOf(message: Message): NodeBuiltinImport | null {
  const specifier = RESOLVE_ERROR.exec(message.text)?.[1];
  if (specifier === undefined || !isBuiltin(specifier)) return null;
  return { specifier, importer: message.location?.file ?? '(unknown)' };
}

function builtinsInMetafile(metafile: Metafile): NodeBuiltinImport[] {
  const found: NodeBuiltinImport[] = [];
  for (const [importer, input] of Object.entries(metafile.inputs)) {
    if (isBuiltin(importer)) found.push({ specifier: importer, importer: '(entry)' });
    for (const imported of input.imports) if (isBuiltin(imported.path)) found.push({ specifier: imported.path, importer });
  }
  return found;
}

/** Bundle `entry` for a browser (esbuild, `platform: 'browser'`, ESM, nothing external). */
export async function bundleForBrowser(entry: string): Promise<BrowserBundle> {
  try {
    const result = await build({
      entryPoints: [entry],
      bundle: true,
      platform: 'browser',
      format: 'esm',
      target: 'es2022',
      write: false,
      metafile: true,
      logLevel: 'silent',
    });
    return {
      code: result.outputFiles[0]?.text ?? null,
      nodeBuiltins: builtinsInMetafile(result.metafile),
      errors: [],
      inputs: Object.keys(result.metafile.inputs),
    };
  } catch (error) {
    const messages = (error as { errors?: Message[] }).errors;
    if (messages === undefined) throw error;
    const nodeBuiltins = messages.map(builtinOf).filter((found): found is NodeBuiltinImport => found !== null);
    const errors = messages.filter((message) => builtinOf(message) === null).map((message) => `${message.location?.file ?? ''}: ${message.text}`);
    return { code: null, nodeBuiltins, errors, inputs: [] };
  }
}
