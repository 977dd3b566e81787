import { CheckpointError } from '@lora/core';

/**
 * A 4-bit checkpoint's quantization state is malformed: a tensor is missing, has the wrong dtype or
 * length, the quant type is unknown, or the JSON blob is invalid. `tensor` names the offending
 * tensor, exactly as it is keyed in the checkpoint.
 */
export class QuantStateError extends CheckpointError {
  /** The checkpoint key of the offending tensor. */
  readonly tensor: string;

  constructor(tensor: string, problem: string, options: { cause?: unknown; hint?: string } = {}) {
    super(
      `[@lora/quant] Malformed 4-bit quantization state in tensor "${tensor}": ${problem}${options.hint ? ` ${options.hint}` : ''}`,
      { plugin: '@lora/quant', cause: options.cause },
    );
    this.tensor = tensor;
  }
}
