// Image names and tags, by the grammar of distribution/reference (what docker and podman accept).
//   name      := [host "/"] path-component ("/" path-component)*
//   host      := domain-component ("." domain-component)* [":" port], or an IPv6 address in brackets;
//                the first part is a host when it has "." or ":" or is "localhost"
//   component := [a-z0-9]+ (([._]|__|-+) [a-z0-9]+)*
//   tag       := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}

export const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
export const REGISTRY_HOST = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?$/;
export const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const MAX_NAME = 255;

/** Whether the first part of a name is a registry host rather than a path component. */
export function looksLikeHost(part: string): boolean {
  return part.includes('.') || part.includes(':') || part === 'localhost';
}

/** Why `name` is not a valid repository name, or undefined when it is. */
export function invalidRepositoryName(name: string): string | undefined {
  if (name.length === 0) return 'is empty';
  if (name.length > MAX_NAME) return `is longer than ${MAX_NAME} characters`;
  const parts = name.split('/');
  const first = parts[0]!;
  if (parts.length > 1 && looksLikeHost(first)) {
    if (!REGISTRY_HOST.test(first)) return `has an invalid registry host "${first}"`;
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
