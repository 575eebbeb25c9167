// Bundles src/index.js into build/bundle.js for j2w (componentize-js).
// The imports that name the SDK's WIT interfaces stay external: j2w binds them.
import { build } from 'esbuild';
import { SpinEsbuildPlugin } from '@spinframework/build-tools/plugins/esbuild/index.js';

await build({
    entryPoints: ['./src/index.js'],
    outfile: './build/bundle.js',
    bundle: true,
    format: 'esm',
    platform: 'node',
    minify: false,
    logLevel: 'error',
    plugins: [await SpinEsbuildPlugin()],
});
