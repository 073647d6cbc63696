#!/usr/bin/env node
// CLI shim: runs the compiled CLI (npm run build first; npm install does it through "prepare").
import { main } from '../dist/src/cli.js';
process.exitCode = await main(process.argv.slice(2));
