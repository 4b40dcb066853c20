// Every command, registered on the program in the order `--help` lists them.
import type { Command } from 'commander';
import { registerInspect } from './inspect.js';
import { registerMerge } from './merge.js';

type Register = (program: Command) => void;

const commands: Register[] = [registerInspect, registerMerge];

export function registerCommands(program: Command): void {
  for (const register of commands) register(program);
}
