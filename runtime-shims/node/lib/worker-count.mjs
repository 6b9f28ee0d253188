// How many worker threads to start.
//
// AWS_LAMBDA_NODEJS_WORKER_COUNT, when set to a positive integer, is used as it is, up to 1600 (the official
// client reads the same variable). Otherwise: 8 workers per CPU, as the official client does, but never more than
// AWS_LAMBDA_MAX_CONCURRENCY (a worker beyond the number of invokes the agent will ever hand out at once would
// only cost an idle V8 isolate), and at least 1. CPUs are the environment's cgroup CPU quota rounded up
// (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`, the smallest along the path to the root),
// bounded by the CPUs this process may run on.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const WORKERS_PER_CPU = 8;
/** Upper bound of any count (LMI's maximum concurrency): a typo must not start a million threads. */
export const MAX_WORKERS = 1600;

function positiveInt(value) {
  if (value === undefined || value === null || !/^\s*\d+\s*$/.test(String(value))) return null;
  const n = Number.parseInt(String(value), 10);
  return n > 0 ? n : null;
}

function readText(file) {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

/** Mount points of cgroup hierarchies: [{root, mountPoint, version: 1|2, controllers: Set}]. */
export function parseMountinfo(text) {
  const mounts = [];
  for (const line of (text || '').split('\n')) {
    const [left, right] = line.split(' - ');
    if (!right) continue;
    const fields = left.split(' ');
    const [fstype, , superOptions = ''] = right.split(' ');
    if (fstype !== 'cgroup' && fstype !== 'cgroup2') continue;
    mounts.push({
      root: fields[3],
      mountPoint: fields[4],
      version: fstype === 'cgroup2' ? 2 : 1,
      controllers: new Set(superOptions.split(',')),
    });
  }
  return mounts;
}

/** `/proc/self/cgroup` → [{controllers: Set, path}] (v2 has an empty controller list). */
export function parseProcCgroup(text) {
  const entries = [];
  for (const line of (text || '').split('\n')) {
    const m = /^(\d+):([^:]*):(.*)$/.exec(line.trim());
    if (m) entries.push({ controllers: new Set(m[2] ? m[2].split(',') : []), path: m[3] });
  }
  return entries;
}

/** Directories from `dir` up to (and with) `top`. */
function upTo(dir, top) {
  const dirs = [];
  let d = dir;
  for (;;) {
    dirs.push(d);
    if (d === top || d.length <= top.length) break;
    d = path.dirname(d);
  }
  return dirs;
}

function quotaOf(dir, version, read) {
  if (version === 2) {
    const text = read(path.join(dir, 'cpu.max'));
    if (!text) return null;
    const [max, period] = text.trim().split(/\s+/);
    const q = Number(max);
    const p = Number(period);
    return max !== 'max' && q > 0 && p > 0 ? q / p : null;
  }
  const q = Number((read(path.join(dir, 'cpu.cfs_quota_us')) || '').trim());
  const p = Number((read(path.join(dir, 'cpu.cfs_period_us')) || '').trim());
  return q > 0 && p > 0 ? q / p : null;
}

/**
 * The CPU quota of this process's cgroup in CPUs (fractional), or null when there is none.
 * @param {{procCgroup: string, mountinfo: string, read: (file: string) => string | null}} sources
 */
export function cgroupCpuQuota({ procCgroup, mountinfo, read }) {
  const mounts = parseMountinfo(mountinfo);
  const entries = parseProcCgroup(procCgroup);
  const v1 = entries.find((e) => e.controllers.has('cpu'));
  const v2 = entries.find((e) => e.controllers.size === 0);
  const candidates = [];
  if (v1) {
    const m = mounts.find((x) => x.version === 1 && x.controllers.has('cpu'));
    if (m) candidates.push({ mount: m, cgroupPath: v1.path, version: 1 });
  }
  if (v2) {
    const m = mounts.find((x) => x.version === 2);
    if (m) candidates.push({ mount: m, cgroupPath: v2.path, version: 2 });
  }
  let best = null;
  for (const { mount, cgroupPath, version } of candidates) {
    const root = mount.root === '/' ? '' : mount.root;
    if (root && !cgroupPath.startsWith(root)) continue;
    const rel = cgroupPath.slice(root.length);
    const dir = path.join(mount.mountPoint, rel);
    for (const d of upTo(dir, mount.mountPoint)) {
      const q = quotaOf(d, version, read);
      if (q !== null && (best === null || q < best)) best = q;
    }
  }
  return best;
}

/** CPUs available to this process: the cgroup quota rounded up, bounded by the CPUs it may run on. */
export function availableCpus({ read = readText, hostCpus = os.availableParallelism() } = {}) {
  const quota = cgroupCpuQuota({
    procCgroup: read('/proc/self/cgroup') || '',
    mountinfo: read('/proc/self/mountinfo') || '',
    read,
  });
  const cpus = quota === null ? hostCpus : Math.min(Math.ceil(quota), hostCpus);
  return Math.max(1, cpus);
}

/**
 * The number of worker threads (see the top of this file).
 * @param {Record<string, string | undefined>} env
 * @param {number} cpus
 */
export function workerCount(env, cpus) {
  const explicit = positiveInt(env.AWS_LAMBDA_NODEJS_WORKER_COUNT);
  if (explicit !== null) return Math.min(explicit, MAX_WORKERS);
  const maxConcurrency = positiveInt(env.AWS_LAMBDA_MAX_CONCURRENCY) ?? 1;
  return Math.max(1, Math.min(maxConcurrency, WORKERS_PER_CPU * Math.max(1, cpus), MAX_WORKERS));
}
