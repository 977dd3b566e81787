// Loaded once by `ensureGradients()` (runtime.ts). tfjs-core's own gradient registrations, instead of
// all of `@tensorflow/tfjs` (layers, converter, data, webgl: ~300 MB of installs, 1.5 MB in a
// browser bundle) that used to be imported only for them. `@tensorflow/tfjs` also registered the
// plain JS `cpu` backend as a side effect, and code compares against it after `initRuntime()`
// (`tf.setBackend('cpu')`), so it is registered here too; it is already a dependency of this package.
import '@tensorflow/tfjs-core/dist/register_all_gradients';
import '@tensorflow/tfjs-backend-cpu';
