#!/usr/bin/env node
// The `replicate` command. The CLI lives in dist/cli (compiled from src/cli).
import { main } from '../dist/cli/main.js';

await main(process.argv);
