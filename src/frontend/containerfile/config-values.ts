// Values some config instructions check before they land in the config: EXPOSE's port specs
// (BuildKit's convert_expose.go) and STOPSIGNAL's signal (moby's signal.ParseSignal, Linux names).

export class ValueError extends Error {}

/** "80", "80/udp", "8000-8002/tcp", "[ip:]host:container" → the "port/proto" keys Docker stores. */
export function parsePortSpec(raw: string): string[] {
  const colon = raw.lastIndexOf(':');
  const containerPart = colon < 0 ? raw : raw.slice(colon + 1);
  const slash = containerPart.indexOf('/');
  const ports = slash < 0 ? containerPart : containerPart.slice(0, slash);
  const proto = (slash < 0 ? 'tcp' : containerPart.slice(slash + 1)).toLowerCase();
  if (ports === '') throw new ValueError(`invalid port: "${raw}": no port given`);
  if (!['tcp', 'udp', 'sctp'].includes(proto)) throw new ValueError(`invalid port: "${raw}": invalid proto: ${proto}`);
  const [start, end] = ports.split('-', 2) as [string, string | undefined];
  const first = portNumber(start, raw);
  const last = end === undefined || end === start ? first : portNumber(end, raw);
  if (last < first) throw new ValueError(`invalid port: "${raw}": invalid port range: ${ports}`);
  const keys: string[] = [];
  for (let p = first; p <= last; p++) keys.push(`${p}/${proto}`);
  return keys;
}

function portNumber(text: string, raw: string): number {
  if (!/^[0-9]+$/.test(text)) throw new ValueError(`invalid port: "${raw}": "${text}" is not a port number`);
  const n = Number(text);
  if (n > 65535) throw new ValueError(`invalid port: "${raw}": ${n} is out of range (0-65535)`);
  return n;
}

const SIGNALS = [
  'ABRT', 'ALRM', 'BUS', 'CHLD', 'CLD', 'CONT', 'FPE', 'HUP', 'ILL', 'INT', 'IO', 'IOT', 'KILL', 'PIPE', 'POLL', 'PROF', 'PWR',
  'QUIT', 'SEGV', 'STKFLT', 'STOP', 'SYS', 'TERM', 'TRAP', 'TSTP', 'TTIN', 'TTOU', 'URG', 'USR1', 'USR2', 'VTALRM', 'WINCH',
  'XCPU', 'XFSZ',
];

/** A signal as STOPSIGNAL takes it: a number, or a name with or without SIG (RTMIN+n, RTMAX-n too). */
export function checkSignal(text: string): void {
  if (/^[0-9]+$/.test(text)) {
    if (Number(text) === 0 || Number(text) > 64) throw new ValueError(`invalid signal: ${text}`);
    return;
  }
  const name = text.toUpperCase().replace(/^SIG/, '');
  if (SIGNALS.includes(name)) return;
  const rt = /^RT(MIN|MAX)(?:([+-])([0-9]+))?$/.exec(name);
  if (rt && (!rt[2] || (rt[1] === 'MIN' ? rt[2] === '+' : rt[2] === '-')) && Number(rt[3] ?? 0) <= 30) return;
  throw new ValueError(`invalid signal: ${text}`);
}
