// dockvm's version, as its package.json says (found upwards from this module, so it works from src/
// under tsx and from dist/src/ alike).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from './vm/paths.js';

export const VERSION: string = (JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { version: string }).version;
