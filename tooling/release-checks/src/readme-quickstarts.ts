// The quickstarts a README promises will run: fenced ```js blocks right after a
// `<!-- quickstart … -->` comment. Other code blocks (fragments, shell commands, output) are not run,
// so the marker is what makes a block a promise.
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { publicPackages, type WorkspacePackage } from './workspace.js';

/** One runnable code block of a README. */
export interface Quickstart {
  /** 1-based line of the opening fence, for failure messages. */
  line: number;
  /** The block's source, without the fences. */
  code: string;
}

const MARKER = /^<!--\s*quickstart\b.*-->\s*$/;
const FENCE = /^(\s*)(`{3,}|~{3,})\s*([\w-]*)/;

/**
 * The quickstart blocks of a README, in order.
 * @throws when a marker is not followed by a ```js fence (on the next non-blank line) or a block is not closed,
 * naming the file and line, so a marker never silently stops covering a block.
 */
export function extractQuickstarts(markdown: string, file: string): Quickstart[] {
  const lines = markdown.split('\n');
  const blocks: Quickstart[] = [];
  for (let index = 0; index < lines.length; index++) {
    if (!MARKER.test(lines[index]!)) continue;
    let open = index + 1;
    while (open < lines.length && lines[open]!.trim() === '') open++;
    const fence = FENCE.exec(lines[open] ?? '');
    if (!fence || fence[3] !== 'js') {
      throw new Error(`${file}:${index + 1}: a quickstart marker must be followed by a \`\`\`js block, found ${JSON.stringify(lines[open] ?? '<end of file>')}.`);
    }
    const closing = new RegExp(`^${fence[1]}${fence[2]![0]}{${fence[2]!.length},}\\s*$`);
    let close = open + 1;
    while (close < lines.length && !closing.test(lines[close]!)) close++;
    if (close === lines.length) throw new Error(`${file}:${open + 1}: the quickstart block is not closed.`);
    blocks.push({ line: open + 1, code: `${lines.slice(open + 1, close).join('\n')}\n` });
    index = close;
  }
  return blocks;
}

/** The language tags of every fenced block of a README (a block without one gives ''). */
export function fenceLanguages(markdown: string): string[] {
  const languages: string[] = [];
  let inside: RegExp | null = null;
  for (const line of markdown.split('\n')) {
    if (inside) {
      if (inside.test(line)) inside = null;
      continue;
    }
    const fence = FENCE.exec(line);
    if (fence) {
      languages.push(fence[3]!);
      inside = new RegExp(`^${fence[1]}${fence[2]![0]}{${fence[2]!.length},}\\s*$`);
    }
  }
  return languages;
}

/** The example scripts a package ships (`examples/*.mjs`), by file name. */
export function packageExamples(entry: WorkspacePackage, root: string): string[] {
  const folder = join(root, entry.directory, 'examples');
  if (!existsSync(folder)) return [];
  return readdirSync(folder)
    .filter((file) => file.endsWith('.mjs'))
    .sort();
}

/** tfjs-core as the READMEs tell users to install it: the exact version `@lora/core` accepts as a peer. */
export function tfjsCoreSpec(): string {
  const core = publicPackages().find((entry) => entry.manifest.name === '@lora/core');
  const range = core?.manifest.peerDependencies?.['@tensorflow/tfjs-core'];
  if (!range) throw new Error('@lora/core declares no @tensorflow/tfjs-core peer range.');
  return `@tensorflow/tfjs-core@${range}`;
}
