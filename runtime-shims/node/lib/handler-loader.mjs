// Finding and loading the handler named by `_HANDLER` (`[dir/]file.export[.nested]`) under LAMBDA_TASK_ROOT,
// as CommonJS (.cjs, or .js outside a "type": "module" package) or as an ES module (.mjs, or .js inside one).

import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

import { RuntimeFault } from './errors.mjs';

const EXTENSIONS = ['', '.js', '.mjs', '.cjs'];

/**
 * Splits a handler string: `lib/app.handler` → {moduleRoot: "lib", moduleName: "app", exportPath: "handler"}.
 * @throws {RuntimeFault} Runtime.MalformedHandlerName
 */
export function parseHandler(handler) {
  if (!handler) throw new RuntimeFault('Runtime.MalformedHandlerName', 'no handler is set (_HANDLER is empty)');
  if (handler.includes('..')) {
    throw new RuntimeFault(
      'Runtime.MalformedHandlerName',
      `'${handler}' is not a valid handler name. Use absolute paths when specifying root directories in handler names.`,
    );
  }
  const base = path.basename(handler);
  const match = /^([^.]*)\.(.+)$/.exec(base);
  if (!match || !match[1]) {
    throw new RuntimeFault('Runtime.MalformedHandlerName', `Bad handler '${handler}': expected file.export`);
  }
  const moduleRoot = handler.slice(0, handler.length - base.length).replace(/\/$/, '');
  return { moduleRoot, moduleName: match[1], exportPath: match[2] };
}

function isFile(p) {
  try {
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

/** True when the nearest package.json above `file` says `"type": "module"`. */
export function inModulePackage(file) {
  let dir = path.dirname(file);
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (isFile(pkg)) {
      try {
        return JSON.parse(fs.readFileSync(pkg, 'utf8')).type === 'module';
      } catch {
        return false; // an unreadable package.json: Node itself would treat the file as CommonJS
      }
    }
    const parent = path.dirname(dir);
    if (parent === dir) return false;
    dir = parent;
  }
}

/** How a file is loaded: ES module or CommonJS. */
export function moduleKind(file) {
  const ext = path.extname(file);
  if (ext === '.mjs') return 'esm';
  if (ext === '.cjs') return 'cjs';
  return inModulePackage(file) ? 'esm' : 'cjs';
}

function looksLikeEsmSyntax(err) {
  return (
    err instanceof SyntaxError &&
    /Cannot use import statement outside a module|Unexpected token 'export'|await is only valid/.test(err.message)
  );
}

async function importFile(file) {
  return import(pathToFileURL(file).href);
}

async function loadFile(file) {
  if (moduleKind(file) === 'esm') return importFile(file);
  const require = createRequire(file);
  try {
    return require(file);
  } catch (err) {
    // ES syntax in a .js file outside a "type": "module" package: load it as an ES module, as Node 22's
    // module syntax detection does.
    if (err && (err.code === 'ERR_REQUIRE_ESM' || looksLikeEsmSyntax(err))) return importFile(file);
    throw err;
  }
}

function findExport(module, exportPath) {
  return exportPath
    .split('.')
    .reduce((value, key) => (value !== null && (typeof value === 'object' || typeof value === 'function') ? value[key] : undefined), module);
}

/** A module-loading failure as the Runtime.* fault AWS reports for it; other errors keep their own type. */
function classify(err, moduleName) {
  if (err instanceof SyntaxError) {
    return new RuntimeFault('Runtime.UserCodeSyntaxError', String(err), err);
  }
  if (err && (err.code === 'MODULE_NOT_FOUND' || err.code === 'ERR_MODULE_NOT_FOUND')) {
    return new RuntimeFault('Runtime.ImportModuleError', `Error: Cannot load module '${moduleName}': ${err.message}`, err);
  }
  return err;
}

/**
 * Loads the handler function.
 * @param {string} taskRoot LAMBDA_TASK_ROOT
 * @param {string} handler `_HANDLER`
 * @returns {Promise<Function>}
 * @throws {RuntimeFault} Runtime.MalformedHandlerName, Runtime.ImportModuleError, Runtime.UserCodeSyntaxError,
 *   Runtime.HandlerNotFound; or whatever the module threw while it loaded
 */
export async function loadHandler(taskRoot, handler) {
  const { moduleRoot, moduleName, exportPath } = parseHandler(handler);
  const base = path.resolve(taskRoot, moduleRoot, moduleName);
  const file = EXTENSIONS.map((ext) => base + ext).find(isFile);
  let module;
  try {
    if (file) {
      module = await loadFile(file);
    } else {
      // Not a file of the function: a package of its node_modules, as the official client allows.
      const require = createRequire(path.join(taskRoot, 'noop.js'));
      let resolved;
      try {
        resolved = require.resolve(moduleName, { paths: [taskRoot, path.join(taskRoot, moduleRoot)] });
      } catch {
        throw new RuntimeFault(
          'Runtime.ImportModuleError',
          `Error: Cannot find module '${moduleName}' (looked for ${base}{,.js,.mjs,.cjs} and a package of that name)`,
        );
      }
      module = await loadFile(resolved);
    }
  } catch (err) {
    throw err instanceof RuntimeFault ? err : classify(err, moduleName);
  }
  let fn = findExport(module, exportPath);
  if (fn === undefined && module !== null && typeof module === 'object' && 'default' in module) {
    fn = findExport(module.default, exportPath);
  }
  if (fn === undefined || fn === null) {
    throw new RuntimeFault('Runtime.HandlerNotFound', `${handler} is undefined or not exported`);
  }
  if (typeof fn !== 'function') {
    throw new RuntimeFault('Runtime.HandlerNotFound', `${handler} is not a function`);
  }
  return fn;
}
