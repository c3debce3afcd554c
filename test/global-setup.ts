import { existsSync } from 'node:fs';
import { keeperPath } from '../src/native/binding.js';
import { buildTargets } from './helpers/build-targets.js';

export default async function setup(): Promise<void> {
  if (!existsSync(keeperPath)) throw new Error(`${keeperPath} is missing: build the addon first (npm install)`);
  await buildTargets();
}
