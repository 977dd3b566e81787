// The report header's facts about this machine, read when the run starts and ends.
import os from 'node:os';

/** CPU model, cores, memory and the 1-minute load average now. */
export function machineInfo() {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model?.trim() ?? 'unknown CPU',
    cores: os.availableParallelism?.() ?? cpus.length,
    memoryBytes: os.totalmem(),
    load: os.loadavg().map((value) => Number(value.toFixed(2))),
    node: process.version,
    platform: `${os.platform()} ${os.arch()}`,
  };
}

/** A file-name-safe name for this machine: CPU model and core count (host names are often random). */
export function machineSlug(info) {
  const cpu = info.cpu
    .toLowerCase()
    .replace(/\(r\)|\(tm\)|cpu|processor|@.*$/gu, ' ')
    .replace(/[^a-z0-9]+/gu, '-')
    .replace(/^-+|-+$/gu, '');
  return `${cpu || 'cpu'}-${info.cores}c`;
}
