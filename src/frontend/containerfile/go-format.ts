// The few bits of Go formatting BuildKit's history entries are made of (`CMD %q`, `VOLUME %v`,
// `HEALTHCHECK %+v`), so that `created_by` reads exactly as BuildKit writes it, and Go's duration
// syntax ("30s", "1m30s") that HEALTHCHECK flags are written in.

/** strconv.Quote: a double-quoted Go string literal; printable Unicode is kept as is. */
export function goQuote(value: string): string {
  let out = '"';
  for (const ch of value) {
    const code = ch.codePointAt(0)!;
    switch (ch) {
      case '"':
        out += '\\"';
        continue;
      case '\\':
        out += '\\\\';
        continue;
      case '\x07':
        out += '\\a';
        continue;
      case '\b':
        out += '\\b';
        continue;
      case '\f':
        out += '\\f';
        continue;
      case '\n':
        out += '\\n';
        continue;
      case '\r':
        out += '\\r';
        continue;
      case '\t':
        out += '\\t';
        continue;
      case '\v':
        out += '\\v';
        continue;
    }
    if (code < 0x20 || code === 0x7f) out += `\\x${code.toString(16).padStart(2, '0')}`;
    else if (code === 0xfffd && ch !== '\ufffd') out += '\\ufffd';
    else if (!/[\p{L}\p{M}\p{N}\p{P}\p{S}\p{Zs}]/u.test(ch) || (/\p{Zs}/u.test(ch) && ch !== ' ')) {
      out += code > 0xffff ? `\\U${code.toString(16).padStart(8, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
    } else out += ch;
  }
  return `${out}"`;
}

/** fmt's %q of a []string: ["a" "b"] */
export function goQuoteList(values: readonly string[]): string {
  return `[${values.map(goQuote).join(' ')}]`;
}

/** fmt's %v of a []string: [a b] */
export function goList(values: readonly string[]): string {
  return `[${values.join(' ')}]`;
}

const UNITS: Record<string, number> = { ns: 1, us: 1e3, 'µs': 1e3, 'μs': 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };

/** time.ParseDuration, in nanoseconds; undefined when the text is not a duration. */
export function parseGoDuration(text: string): number | undefined {
  if (text === '0') return 0;
  const re = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)/gy;
  let rest = text;
  let sign = 1;
  if (rest.startsWith('-') || rest.startsWith('+')) {
    sign = rest.startsWith('-') ? -1 : 1;
    rest = rest.slice(1);
  }
  if (rest === '') return undefined;
  let total = 0;
  let at = 0;
  while (at < rest.length) {
    re.lastIndex = at;
    const match = re.exec(rest);
    if (!match) return undefined;
    total += Number(match[1]) * UNITS[match[2]!]!;
    at = re.lastIndex;
  }
  return sign * Math.round(total);
}

/** time.Duration.String: "0s", "500ms", "1.5s", "1m30s", "1h0m0s". */
export function goDuration(ns: number): string {
  if (ns === 0) return '0s';
  const negative = ns < 0;
  let n = Math.abs(ns);
  let out: string;
  if (n < 1e9) {
    // under a second: the largest unit that keeps a leading digit
    const [unit, size] = n < 1e3 ? ['ns', 1] : n < 1e6 ? ['µs', 1e3] : ['ms', 1e6];
    out = `${trimFraction(n / size, Math.log10(size))}${unit}`;
  } else {
    const hours = Math.floor(n / 3600e9);
    n -= hours * 3600e9;
    const minutes = Math.floor(n / 60e9);
    n -= minutes * 60e9;
    const seconds = `${trimFraction(n / 1e9, 9)}s`;
    out = hours > 0 ? `${hours}h${minutes}m${seconds}` : minutes > 0 ? `${minutes}m${seconds}` : seconds;
  }
  return negative ? `-${out}` : out;
}

function trimFraction(value: number, digits: number): string {
  return value.toFixed(digits).replace(/\.?0+$/, '') || '0';
}
