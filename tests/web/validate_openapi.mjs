// Validates an OpenAPI document with @seriousme/openapi-schema-validator
// (the OpenAPI Initiative's JSON schemas for 3.0/3.1, checked by ajv).
// Usage: node validate_openapi.mjs NPM_DIR FILE
// Prints {"valid": true, "version": "3.1"} or {"valid": false, "errors": [...]};
// exits 0 only when the document is valid.
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [npmDir, file] = process.argv.slice(2);
const entry = path.join(npmDir, 'node_modules', '@seriousme', 'openapi-schema-validator',
                        'index.js');
const { Validator } = await import(pathToFileURL(entry).href);
const validator = new Validator();
const res = await validator.validate(path.resolve(file));
console.log(JSON.stringify({ valid: res.valid, version: validator.version, errors: res.errors }));
process.exit(res.valid ? 0 : 1);
