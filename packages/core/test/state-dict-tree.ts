import * as tf from '@tensorflow/tfjs-core';
import { entryToTensor, Linear, Module, readSafetensorsFile } from '../src/index.js';

class Container extends Module {
  add(name: string, module: Module): Module {
    return this.registerModule(name, module);
  }
}

/**
 * A module tree with a `Linear` at every path of a checkpoint's 2-D `.weight` tensors (selected by
 * `isLinear`), loaded with the checkpoint's values. It has the checkpoint's module paths but no
 * forward pass: enough to test adapter injection, loading and merging against PEFT's files.
 */
export async function linearTreeFromCheckpoint(
  file: string,
  options: { isLinear: (path: string) => boolean; fanInFanOut: (path: string) => boolean },
): Promise<Module> {
  const checkpoint = await readSafetensorsFile(file);
  const root = new Container();
  for (const [key, entry] of checkpoint.tensors) {
    if (!key.endsWith('.weight') || entry.shape.length !== 2) continue;
    const modulePath = key.slice(0, -'.weight'.length);
    if (!options.isLinear(modulePath)) continue;
    const fanInFanOut = options.fanInFanOut(modulePath);
    const [rows, cols] = entry.shape as [number, number];
    const bias = checkpoint.tensors.get(`${modulePath}.bias`);
    const linear = new Linear({
      inFeatures: fanInFanOut ? rows : cols,
      outFeatures: fanInFanOut ? cols : rows,
      bias: bias !== undefined,
      fanInFanOut,
    });
    tf.tidy(() => {
      linear.weight.assign(entryToTensor(entry));
      if (bias) linear.bias!.assign(entryToTensor(bias));
    });
    const segments = modulePath.split('.');
    let parent: Module = root;
    for (const segment of segments.slice(0, -1)) {
      const existing = parent.namedChildren().find(([name]) => name === segment)?.[1];
      parent = existing ?? (parent as Container).add(segment, new Container());
    }
    (parent as Container).add(segments[segments.length - 1]!, linear);
  }
  return root;
}
