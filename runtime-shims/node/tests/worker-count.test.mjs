import assert from 'node:assert/strict';
import { test } from 'node:test';

import { availableCpus, cgroupCpuQuota, MAX_WORKERS, workerCount } from '../lib/worker-count.mjs';

test('AWS_LAMBDA_NODEJS_WORKER_COUNT wins, bounded by the maximum', () => {
  assert.equal(workerCount({ AWS_LAMBDA_NODEJS_WORKER_COUNT: '3', AWS_LAMBDA_MAX_CONCURRENCY: '64' }, 8), 3);
  assert.equal(workerCount({ AWS_LAMBDA_NODEJS_WORKER_COUNT: '99999' }, 1), MAX_WORKERS);
});

test('a worker count that is not a positive integer is ignored', () => {
  for (const bad of ['0', '-2', 'four', '2.5', '']) {
    assert.equal(workerCount({ AWS_LAMBDA_NODEJS_WORKER_COUNT: bad, AWS_LAMBDA_MAX_CONCURRENCY: '64' }, 1), 8, bad);
  }
});

test('the default is 8 per CPU, never above the max concurrency, at least 1', () => {
  assert.equal(workerCount({ AWS_LAMBDA_MAX_CONCURRENCY: '128' }, 2), 16);
  assert.equal(workerCount({ AWS_LAMBDA_MAX_CONCURRENCY: '4' }, 2), 4);
  assert.equal(workerCount({}, 4), 1, 'no AWS_LAMBDA_MAX_CONCURRENCY: one invoke at a time');
  assert.equal(workerCount({ AWS_LAMBDA_MAX_CONCURRENCY: '64' }, 0), 8);
});

function fakeFs(files) {
  return (file) => (file in files ? files[file] : null);
}

test('cgroup v1: cfs quota over period, the smallest along the path', () => {
  const read = fakeFs({
    '/sys/fs/cgroup/cpu,cpuacct/agent/env-1/cpu.cfs_quota_us': '300000\n',
    '/sys/fs/cgroup/cpu,cpuacct/agent/env-1/cpu.cfs_period_us': '100000\n',
    '/sys/fs/cgroup/cpu,cpuacct/agent/cpu.cfs_quota_us': '200000\n',
    '/sys/fs/cgroup/cpu,cpuacct/agent/cpu.cfs_period_us': '100000\n',
  });
  const quota = cgroupCpuQuota({
    procCgroup: '4:memory:/agent/env-1\n3:cpu,cpuacct:/agent/env-1\n0::/\n',
    mountinfo:
      '32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n' +
      '35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n' +
      '41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n',
    read,
  });
  assert.equal(quota, 2, 'the parent allows 2 CPUs, fewer than the 3 of the environment');
});

test('cgroup v1: no quota (-1) anywhere is no limit', () => {
  const read = fakeFs({
    '/sys/fs/cgroup/cpu/a/cpu.cfs_quota_us': '-1\n',
    '/sys/fs/cgroup/cpu/a/cpu.cfs_period_us': '100000\n',
  });
  const quota = cgroupCpuQuota({
    procCgroup: '1:cpu:/a\n',
    mountinfo: '32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n',
    read,
  });
  assert.equal(quota, null);
});

test('cgroup v2: cpu.max, "max" means no quota, fractions round up', () => {
  const mountinfo = '30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n';
  const procCgroup = '0::/lmi/env-2\n';
  const half = fakeFs({ '/sys/fs/cgroup/lmi/env-2/cpu.max': '150000 100000\n' });
  assert.equal(cgroupCpuQuota({ procCgroup, mountinfo, read: half }), 1.5);
  assert.equal(availableCpus({ read: (f) => (f === '/proc/self/cgroup' ? procCgroup : f === '/proc/self/mountinfo' ? mountinfo : half(f)), hostCpus: 8 }), 2);
  const unlimited = fakeFs({ '/sys/fs/cgroup/lmi/env-2/cpu.max': 'max 100000\n' });
  assert.equal(cgroupCpuQuota({ procCgroup, mountinfo, read: unlimited }), null);
});

test('a mount whose root is below the hierarchy root (a container) maps the path', () => {
  const read = fakeFs({ '/sys/fs/cgroup/env-3/cpu.max': '200000 100000' });
  const quota = cgroupCpuQuota({
    procCgroup: '0::/outer/env-3\n',
    mountinfo: '30 23 0:26 /outer /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n',
    read,
  });
  assert.equal(quota, 2);
});

test('without a quota the host CPUs count, and never fewer than 1', () => {
  assert.equal(availableCpus({ read: () => null, hostCpus: 6 }), 6);
  assert.equal(availableCpus({ read: () => null, hostCpus: 0 }), 1);
});
