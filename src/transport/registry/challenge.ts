// WWW-Authenticate challenges (RFC 7235), as registries send them:
//   Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"
//   Basic realm="basic-realm"

export interface Challenge {
  /** lowercase: "bearer", "basic" */
  scheme: string;
  /** parameter names lowercase */
  params: Record<string, string>;
}

/** Every challenge in a WWW-Authenticate header value (a registry sends one, but the grammar allows a list). */
export function parseChallenges(header: string | null | undefined): Challenge[] {
  if (!header) return [];
  const challenges: Challenge[] = [];
  let at = 0;
  const text = header;
  const skipSpace = () => {
    while (at < text.length && (text[at] === ' ' || text[at] === '\t')) at++;
  };
  while (at < text.length) {
    skipSpace();
    const scheme = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+/.exec(text.slice(at));
    if (!scheme) {
      at++;
      continue;
    }
    at += scheme[0].length;
    const challenge: Challenge = { scheme: scheme[0].toLowerCase(), params: {} };
    challenges.push(challenge);
    // auth-params: name=value or name="quoted value", comma-separated, until the next scheme.
    for (;;) {
      skipSpace();
      while (text[at] === ',') {
        at++;
        skipSpace();
      }
      const param = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*/.exec(text.slice(at));
      if (!param) break;
      at += param[0].length;
      let value = '';
      if (text[at] === '"') {
        at++;
        while (at < text.length && text[at] !== '"') {
          if (text[at] === '\\' && at + 1 < text.length) at++;
          value += text[at];
          at++;
        }
        at++;
      } else {
        const token = /^[^,\s]*/.exec(text.slice(at))![0];
        value = token;
        at += token.length;
      }
      challenge.params[param[1]!.toLowerCase()] = value;
    }
  }
  return challenges;
}
