// The workspace packages the benchmark measures (bench/ is a private workspace package, so these
// resolve to the same single copies of @tensorflow/tfjs-core and @lora/core the packages use).
import * as tf from '@tensorflow/tfjs-core';
import * as core from '@lora/core';
import * as coreInternal from '@lora/core/internal';
import * as cudaBackend from '@lora/cuda-backend';
import * as models from '@lora/models';

export { core, coreInternal, cudaBackend, models, tf };
