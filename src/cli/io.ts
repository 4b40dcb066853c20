// Output conventions shared by every command: results as one JSON document on stdout with --json, data
// on stdout only with `-o -` (files are written atomically by src/output.ts), messages on stderr.

/** Print the --json result: one document, keys in the order the command built them. */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Messages go to stderr: stdout may carry data or JSON. */
export function say(line: string): void {
  process.stderr.write(`${line}\n`);
}
