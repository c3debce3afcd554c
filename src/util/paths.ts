import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The package root: two levels above this file in both src/ (tests) and dist/ (built). */
export const packageRoot: string = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
