// Helpers the bench sections share: run one measurement in a child process (tfjs backends are per
// process) and print aligned text tables.
import { spawn } from 'node:child_process';

/**
 * Run `node script ...args` (or `command script ...args`); resolve `{ ok: true, value }` with the
 * JSON object on the child's last stdout line, or `{ ok: false, reason }` (the last lines of its
 * stderr) when it fails. Never rejects.
 */
export function runChild(script, args, log, command = process.execPath) {
  return new Promise((resolve) => {
    const child = spawn(command, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    child.on('close', (code) => {
      const last = stdout.trim().split('\n').pop() ?? '';
      try {
        if (code !== 0) throw new Error(`exit code ${code}`);
        resolve({ ok: true, value: JSON.parse(last) });
      } catch (error) {
        const reason = stderr.trim().split('\n').filter((line) => line.trim() && !/^=+$|Hi, looks like/u.test(line)).slice(-3).join(' | ') || error.message;
        log(`  ! ${args.slice(0, 3).join(' ')} failed: ${reason}`);
        resolve({ ok: false, reason });
      }
    });
  });
}

/** A right-aligned text table; `align` may mark columns 'left'. */
export function table(headers, rows, align = []) {
  const widths = headers.map((header, i) => Math.max(header.length, ...rows.map((row) => String(row[i]).length)));
  const line = (cells) => cells.map((cell, i) => (align[i] === 'left' ? String(cell).padEnd(widths[i]) : String(cell).padStart(widths[i]))).join('  ').trimEnd();
  return [line(headers), line(widths.map((width) => '-'.repeat(width))), ...rows.map(line)].join('\n');
}

/** Median of a non-empty list of numbers. */
export const median = (list) => [...list].sort((x, y) => x - y)[Math.floor(list.length / 2)];

/**
 * Start a process that keeps one core busy (a JS busy loop), for measuring under load. Returns a
 * function that stops it.
 */
export function startCompetingProcess() {
  const child = spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' });
  return () => {
    child.kill('SIGKILL');
  };
}
