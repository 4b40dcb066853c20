#!/usr/bin/env node
// The CLI entry: the program is bundled into one file by `npm run build` (scripts/bundle.ts), which
// loads in half the time of the modules in dist/src it is made from.
import { main } from '../dist/cli/main.mjs';

await main(process.argv);
