// Every command, registered on the program in the order `--help` lists them.
import type { Command } from 'commander';
import { registerExport } from './export.js';
import { registerInspect } from './inspect.js';
import { registerMerge } from './merge.js';
import { registerRunAsRoot } from './run-as-root.js';

type Register = (program: Command) => void;

const commands: Register[] = [registerRunAsRoot, registerExport, registerInspect, registerMerge];

export function registerCommands(program: Command): void {
  for (const register of commands) register(program);
}
