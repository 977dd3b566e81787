// A static server on 127.0.0.1 for the check page: the page, its bundled script and the .wasm files
// of @tensorflow/tfjs-backend-wasm (what an app serves beside its bundle).
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';

const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>@lora browser check</title></head>
<body><script type="module" src="/bundle.js"></script></body></html>`;

/** A running server: its origin and how to stop it. */
export interface PageServer {
  readonly url: string;
  close(): Promise<void>;
}

/** Serve `/` (the page), `/bundle.js` (`script`) and `/wasm/<file>.wasm` (from `wasmDirectory`) on 127.0.0.1. */
export async function servePage(script: string, wasmDirectory: string): Promise<PageServer> {
  const server = createServer((request, response) => {
    const url = new URL(request.url ?? '/', 'http://127.0.0.1');
    const send = (status: number, type: string, body: string | Uint8Array): void => {
      response.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
      response.end(body);
    };
    if (url.pathname === '/') return send(200, 'text/html; charset=utf-8', PAGE);
    if (url.pathname === '/bundle.js') return send(200, 'text/javascript; charset=utf-8', script);
    const wasm = /^\/wasm\/([\w.-]+\.wasm)$/u.exec(url.pathname)?.[1];
    if (wasm === undefined) return send(404, 'text/plain', 'not found');
    readFile(path.join(wasmDirectory, wasm)).then(
      (bytes) => send(200, 'application/wasm', bytes),
      () => send(404, 'text/plain', 'not found'),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/`,
    close: () => new Promise<void>((resolve, reject) => server.close((error) => (error ? reject(error) : resolve()))),
  };
}
