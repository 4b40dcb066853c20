// Every command, registered on the program in the order `--help` lists them.
import type { Command } from 'commander';
import { registerBuild } from './build.js';
import { registerCache } from './cache.js';
import { registerDoctor } from './doctor.js';
import { registerExport } from './export.js';
import { registerInspect } from './inspect.js';
import { registerMerge } from './merge.js';
import { registerPull } from './pull.js';
import { registerPush } from './push.js';
import { registerRefresh } from './refresh.js';
import { registerRunAsRoot } from './run-as-root.js';
import { registerShell } from './shell.js';

type Register = (program: Command) => void;

const commands: Register[] = [registerRunAsRoot, registerBuild, registerExport, registerInspect, registerMerge, registerPull, registerPush, registerRefresh, registerShell, registerDoctor, registerCache];

export function registerCommands(program: Command): void {
  for (const register of commands) register(program);
}
