// Headless Chromium without a browser download: the build inside the @sparticuz/chromium npm package
// (decompressed to the temp directory on first use), driven by puppeteer-core.
import chromium from '@sparticuz/chromium';
import puppeteer, { type Browser } from 'puppeteer-core';

// WebGPU on SwiftShader, Chromium's CPU implementation of Vulkan: headless Chromium on a machine
// without a GPU gives no WebGPU adapter otherwise, and WebGPU is the first backend useBestBackend
// tries in a browser. (SwiftShader is also what WebGL runs on here: chromium.args' --use-angle.)
const WEBGPU_ON_SWIFTSHADER = ['--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader'];

/**
 * Start headless Chromium, with WebGPU and WebGL both on SwiftShader (the CPU).
 * @throws {Error} saying why Chromium could not start and what to check; never skips.
 */
export async function launchChromium(): Promise<Browser> {
  let executablePath: string;
  try {
    executablePath = await chromium.executablePath();
  } catch (error) {
    throw new Error(`[browser-check] @sparticuz/chromium could not unpack its Chromium (${String(error)}). Run \`pnpm install\` and check that the temp directory is writable.`, {
      cause: error,
    });
  }
  try {
    return await puppeteer.launch({ executablePath, args: [...chromium.args, ...WEBGPU_ON_SWIFTSHADER], headless: 'shell' });
  } catch (error) {
    throw new Error(
      `[browser-check] Headless Chromium (${executablePath}) did not start: ${(error as Error).message.split('\n')[0]}. ` +
        'It needs the shared libraries of a Linux x64 glibc system (libnss3 etc.); see @sparticuz/chromium’s README.',
      { cause: error },
    );
  }
}
