/**
 * Thin singular value decomposition of a dense row-major matrix [rows, cols] in float64, by
 * one-sided Jacobi rotations (accurate to ~1e-13 relative; fine for the adapter-sized matrices
 * it serves). Returns U [rows, k], S [k] descending, Vt [k, cols] with k = min(rows, cols).
 */
export function thinSvd(
  matrix: Float64Array | Float32Array,
  rows: number,
  cols: number,
): { u: Float64Array; s: Float64Array; vt: Float64Array; k: number } {
  // Work on the side with fewer columns: SVD(Aᵀ) swaps U and V.
  const transpose = cols > rows;
  const m = transpose ? cols : rows;
  const n = transpose ? rows : cols;
  const a = new Float64Array(m * n);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      if (transpose) a[j * n + i] = matrix[i * cols + j]!;
      else a[i * n + j] = matrix[i * cols + j]!;
    }
  }
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  for (let sweep = 0; sweep < 60; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        let alpha = 0;
        let beta = 0;
        let gamma = 0;
        for (let i = 0; i < m; i++) {
          const ap = a[i * n + p]!;
          const aq = a[i * n + q]!;
          alpha += ap * ap;
          beta += aq * aq;
          gamma += ap * aq;
        }
        if (Math.abs(gamma) <= 1e-15 * Math.sqrt(alpha * beta) || gamma === 0) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        for (let i = 0; i < m; i++) {
          const ap = a[i * n + p]!;
          const aq = a[i * n + q]!;
          a[i * n + p] = c * ap - s * aq;
          a[i * n + q] = s * ap + c * aq;
        }
        for (let i = 0; i < n; i++) {
          const vp = v[i * n + p]!;
          const vq = v[i * n + q]!;
          v[i * n + p] = c * vp - s * vq;
          v[i * n + q] = s * vp + c * vq;
        }
      }
    }
    if (!rotated) break;
  }
  const norms = new Float64Array(n);
  for (let j = 0; j < n; j++) {
    let sum = 0;
    for (let i = 0; i < m; i++) sum += a[i * n + j]! ** 2;
    norms[j] = Math.sqrt(sum);
  }
  const order = [...norms.keys()].sort((x, y) => norms[y]! - norms[x]!);
  const k = n;
  // Left vectors of the worked matrix: columns of a / norm; right vectors: columns of v.
  const left = new Float64Array(m * k);
  const right = new Float64Array(n * k);
  const s = new Float64Array(k);
  order.forEach((column, index) => {
    const norm = norms[column]!;
    s[index] = norm;
    for (let i = 0; i < m; i++) left[i * k + index] = norm > 0 ? a[i * n + column]! / norm : 0;
    for (let i = 0; i < n; i++) right[i * k + index] = v[i * n + column]!;
  });
  // For the original matrix: U is [rows, k], Vt is [k, cols].
  const u = new Float64Array(rows * k);
  const vt = new Float64Array(k * cols);
  const uSource = transpose ? right : left;
  const vSource = transpose ? left : right;
  for (let i = 0; i < rows; i++) for (let j = 0; j < k; j++) u[i * k + j] = uSource[i * k + j]!;
  for (let j = 0; j < k; j++) for (let i = 0; i < cols; i++) vt[j * cols + i] = vSource[i * k + j]!;
  return { u, s, vt, k };
}
