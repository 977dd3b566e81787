// Node-only: the file host on node:fs that Node's entries of @lora/core install. Never imported by
// the main entry, so browser bundles stay free of Node built-ins.
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { setFileHost, type FileHost } from './file-host.js';
import { faultPoint } from './files.js';

async function syncDirectory(directory: string): Promise<void> {
  faultPoint('sync-directory', directory);
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(directory, 'r');
  } catch (error) {
    // Platforms that cannot open a directory for syncing (Windows) skip it.
    if (['EISDIR', 'EPERM', 'EACCES', 'ENOTSUP', 'EINVAL'].includes((error as NodeJS.ErrnoException).code ?? '')) return;
    throw error;
  }
  try {
    await handle.sync();
  } catch (error) {
    if (!['EINVAL', 'ENOTSUP', 'EPERM', 'EBADF'].includes((error as NodeJS.ErrnoException).code ?? '')) throw error;
  } finally {
    await handle.close();
  }
}

async function writeFileAtomic(target: string, data: Uint8Array | string | Iterable<Uint8Array | string>): Promise<void> {
  const directory = path.dirname(target);
  faultPoint('mkdir', directory);
  await fs.mkdir(directory, { recursive: true });
  const temporary = path.join(directory, `.${path.basename(target)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  faultPoint('open', temporary);
  const handle = await fs.open(temporary, 'w');
  try {
    try {
      const chunks = typeof data === 'string' || data instanceof Uint8Array ? [data] : data;
      for (const chunk of chunks) {
        faultPoint('write', temporary);
        await handle.write(typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk);
      }
      faultPoint('sync', temporary);
      await handle.sync();
    } finally {
      // Always closed: a descriptor is not state a killed process leaves behind.
      await handle.close();
    }
    faultPoint('rename', target);
    await fs.rename(temporary, target);
  } catch (error) {
    faultPoint('remove', temporary);
    await fs.rm(temporary, { force: true });
    throw error;
  }
  await syncDirectory(directory);
}

/** The file host on `node:fs`. */
export const nodeFileHost: FileHost = {
  kind: 'node',
  readFile: async (file) => {
    const bytes = await fs.readFile(file);
    return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  },
  readText: (file) => fs.readFile(file, 'utf8'),
  exists: (file) =>
    fs.access(file).then(
      () => true,
      () => false,
    ),
  mkdir: async (directory) => {
    await fs.mkdir(directory, { recursive: true });
  },
  remove: (file) => fs.rm(file, { force: true }),
  writeFileAtomic,
  syncDirectory,
  join: (...segments) => path.join(...segments),
  dirname: (file) => path.dirname(file),
  resolvePackageFile: (specifier, parentUrl) => createRequire(parentUrl).resolve(specifier),
};

/** Make the path-based APIs of every @lora/* package use `node:fs`. */
export function installNodeFileHost(): void {
  setFileHost(nodeFileHost);
}
