// Runs mppx's discovery validator (`validate` from `mppx/discovery`) on
// OpenAPI documents and prints, as one JSON array, what it found in each:
// [{file, issues: [{message, path, severity}]}].
//
// usage: node validate.mjs <directory mppx is installed in> <file.json>...
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [installed, ...files] = process.argv.slice(2);
// Resolved through the package's own export map, as an application would.
const require = createRequire(join(installed, 'package.json'));
const { validate } = await import(pathToFileURL(require.resolve('mppx/discovery')).href);

const results = [];
for (const file of files) {
  const doc = JSON.parse(await readFile(file, 'utf8'));
  results.push({ file, issues: validate(doc) });
}
console.log(JSON.stringify(results));
