#!/usr/bin/env node
// The CLI entry: the compiled program lives in dist/ (`npm run build`).
import { main } from '../dist/src/cli/main.js';

await main(process.argv);
