import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { loadHandler, moduleKind, parseHandler } from '../lib/handler-loader.mjs';
import { FIXTURES } from './shim-process.mjs';

const [NODE_MAJOR, NODE_MINOR] = process.versions.node.split('.').map(Number);

test('handler strings split into directory, file and export path', () => {
  assert.deepEqual(parseHandler('index.handler'), { moduleRoot: '', moduleName: 'index', exportPath: 'handler' });
  assert.deepEqual(parseHandler('src/lib/app.api.v1'), { moduleRoot: 'src/lib', moduleName: 'app', exportPath: 'api.v1' });
});

test('malformed handler strings are Runtime.MalformedHandlerName', () => {
  for (const bad of ['', 'index', '.handler', 'index.', '../up.handler', 'a/../b.handler']) {
    assert.throws(() => parseHandler(bad), { name: 'Runtime.MalformedHandlerName' }, JSON.stringify(bad));
  }
});

test('module kind: .mjs and "type": "module" are ES modules, .cjs and plain .js CommonJS', () => {
  assert.equal(moduleKind(path.join(FIXTURES, 'actions.mjs')), 'esm');
  assert.equal(moduleKind(path.join(FIXTURES, 'callback.cjs')), 'cjs');
  assert.equal(moduleKind(path.join(FIXTURES, 'cjs_async.js')), 'cjs');
  assert.equal(moduleKind(path.join(FIXTURES, 'esm_pkg', 'app.js')), 'esm');
});

test('every handler style of the fixtures loads as a function', async () => {
  for (const h of ['actions.handler', 'callback.handler', 'cjs_async.handler', 'esm_pkg/app.handler']) {
    const fn = await loadHandler(FIXTURES, h);
    assert.equal(typeof fn, 'function', h);
  }
});

test('load failures have the types AWS reports', async () => {
  const cases = [
    ['does_not_exist.handler', 'Runtime.ImportModuleError', /Cannot find module 'does_not_exist'/],
    ['missing_dep.handler', 'Runtime.ImportModuleError', /lmi-no-such-package/],
    ['actions.nope', 'Runtime.HandlerNotFound', /actions.nope is undefined or not exported/],
    ['not_a_function.handler', 'Runtime.HandlerNotFound', /is not a function/],
    ['syntax_error.handler', 'Runtime.UserCodeSyntaxError', /SyntaxError/],
    ['init_throws.handler', 'Error', /boom at init/],
  ];
  for (const [handler, name, message] of cases) {
    await assert.rejects(loadHandler(FIXTURES, handler), { name, message }, handler);
  }
});

function tempFunction(files) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lmi-node-shim-'));
  for (const [name, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    fs.writeFileSync(path.join(dir, name), text);
  }
  return dir;
}

test('nested exports, default exports and packages of node_modules resolve', async () => {
  const dir = tempFunction({
    'nested.mjs': 'export const api = { v1: { handler: async () => "nested" } };',
    'defaulted.cjs': 'module.exports = { default: { handler: async () => "default" } };',
    'esm_default.mjs': 'export default { handler: async () => "esm default" };',
    'node_modules/pkg-fn/package.json': '{"name": "pkg-fn", "main": "main.js"}',
    'node_modules/pkg-fn/main.js': 'exports.handler = async () => "from a package";',
  });
  try {
    assert.equal(await (await loadHandler(dir, 'nested.api.v1.handler'))(), 'nested');
    assert.equal(await (await loadHandler(dir, 'esm_default.handler'))(), 'esm default');
    assert.equal(await (await loadHandler(dir, 'pkg-fn.handler'))(), 'from a package');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// Node >= 20.19 and >= 22.7 detect ES module syntax in a .js file outside a "type": "module" package.
const DETECTS_MODULE_SYNTAX = NODE_MAJOR > 22 || (NODE_MAJOR === 22 && NODE_MINOR >= 7) || (NODE_MAJOR === 20 && NODE_MINOR >= 19);

test('ES syntax in a .js file outside a module package loads as an ES module where Node detects it', async () => {
  const dir = tempFunction({ 'plain.js': 'export const handler = async () => "detected";' });
  try {
    if (DETECTS_MODULE_SYNTAX) {
      assert.equal(await (await loadHandler(dir, 'plain.handler'))(), 'detected');
    } else {
      await assert.rejects(loadHandler(dir, 'plain.handler'), { name: 'Runtime.UserCodeSyntaxError' });
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
