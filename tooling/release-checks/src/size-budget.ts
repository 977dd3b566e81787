// Size budgets: a package that grows past its budget fails `pnpm verify`, so growth is a decision
// (raise the budget here and the figures in the README) rather than an accident.

/** Measured sizes, by package name (tarballs) and by scenario subject (installs). */
export interface MeasuredSizes {
  tarballBytes: Record<string, number>;
  installedBytes: Record<string, number>;
}

/** The most bytes each tarball, and each one-variant app's node_modules, may take. */
export const SIZE_BUDGETS: MeasuredSizes = {
  tarballBytes: {
    '@lora/core': 520_000,
    '@lora/models': 115_000,
    '@lora/base-moby': 12_500_000,
    '@lora/dora': 32_000,
    '@lora/quant': 80_000,
    '@lora/adalora': 64_000,
    '@lora/hyper': 72_000,
    '@lora/cuda-backend': 32_000,
    '@lora/selector': 52_000,
  },
  // node_modules of an app that installed the subject, @lora/core and @tensorflow/tfjs-core with npm.
  installedBytes: {
    '@lora/core': 75_000_000,
    '@lora/dora': 75_000_000,
    '@lora/quant': 75_000_000,
    '@lora/adalora': 75_000_000,
    '@lora/hyper': 75_000_000,
    '@lora/models': 90_000_000,
    '@lora/cuda-backend': 75_000_000,
  },
};

function megabytes(bytes: number): string {
  return bytes >= 1_000_000 ? `${(bytes / 1_000_000).toFixed(1)} MB` : `${(bytes / 1000).toFixed(1)} kB`;
}

/** A Markdown table of measured sizes against their budgets (printed by the install check). */
export function formatSizeTable(measured: MeasuredSizes): string {
  const names = [...new Set([...Object.keys(measured.tarballBytes), ...Object.keys(measured.installedBytes)])].sort();
  const lines = ['| package | tarball (budget) | one-variant app node_modules (budget) |', '| --- | --- | --- |'];
  for (const name of names) {
    const tarball = measured.tarballBytes[name];
    const installed = measured.installedBytes[name];
    const cell = (value: number | undefined, budget: number | undefined) =>
      value === undefined ? '—' : `${megabytes(value)} (${budget === undefined ? 'no budget' : megabytes(budget)})`;
    lines.push(`| \`${name}\` | ${cell(tarball, SIZE_BUDGETS.tarballBytes[name])} | ${cell(installed, SIZE_BUDGETS.installedBytes[name])} |`);
  }
  return lines.join('\n');
}
