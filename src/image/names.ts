// Image names and tags, by the grammar of distribution/reference (what docker and podman accept).
//   name      := [domain "/"] path-component ("/" path-component)*
//   domain    := domain-component ("." domain-component)* [":" port]   (first part with "." or ":", or "localhost")
//   component := [a-z0-9]+ (([._]|__|-+) [a-z0-9]+)*
//   tag       := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}

const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const DOMAIN = /^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const MAX_NAME = 255;

/** Whether the first part of a name is a registry host rather than a path component. */
export function looksLikeDomain(part: string): boolean {
  return part.includes('.') || part.includes(':') || part === 'localhost';
}

/** Why `name` is not a valid repository name, or undefined when it is. */
export function invalidRepositoryName(name: string): string | undefined {
  if (name.length === 0) return 'is empty';
  if (name.length > MAX_NAME) return `is longer than ${MAX_NAME} characters`;
  const parts = name.split('/');
  const first = parts[0]!;
  if (parts.length > 1 && looksLikeDomain(first)) {
    if (!DOMAIN.test(first)) return `has an invalid registry host "${first}"`;
    parts.shift();
  }
  for (const part of parts) {
    if (!PATH_COMPONENT.test(part)) {
      return part.toLowerCase() !== part
        ? `must be lowercase ("${part}")`
        : `has an invalid component "${part}" (lowercase letters, digits and single . _ __ or - between them)`;
    }
  }
  return undefined;
}

export function isValidTag(tag: string): boolean {
  return TAG.test(tag);
}

/** "repo:tag" → [repo, tag]; a ":" inside the registry host ("localhost:5000/x") is not a tag separator. */
export function splitRepoTag(reference: string): [string, string | undefined] {
  const slash = reference.lastIndexOf('/');
  const colon = reference.lastIndexOf(':');
  if (colon > slash) return [reference.slice(0, colon), reference.slice(colon + 1)];
  return [reference, undefined];
}
