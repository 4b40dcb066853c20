// --push REF: where each refreshed image goes. One REF serves many specs through placeholders: {name} is
// the spec's image name and {tag} its tag (the spec's, or the one derived from the content). A REF that
// ends without a tag or digest gets ":{tag}".
import { ImageReferenceError, UsageError } from '../errors.js';
import { parseImageReference } from '../image/reference.js';

const PLACEHOLDER = /\{([^}]*)\}/g;
const KNOWN = new Set(['name', 'tag']);

/** Check a --push template once, before any spec is built; `specCount` specs will share it. */
export function checkPushTemplate(template: string, specCount: number): void {
  for (const [, key] of template.matchAll(PLACEHOLDER)) {
    if (!KNOWN.has(key!)) throw new UsageError(`--push ${template}: unknown placeholder {${key}}; use {name} and {tag}`);
  }
  if (specCount > 1 && !template.includes('{name}')) {
    throw new UsageError(`--push ${template} would send ${specCount} images to one place: put {name} in it, e.g. --push registry.example/{name}:{tag}`);
  }
  pushTarget(template, 'dockvm/check', 'check');
}

/** The docker:// reference `template` names for the image `name:tag`. */
export function pushTarget(template: string, name: string, tag: string): string {
  let text = template.replace(PLACEHOLDER, (whole, key: string) => (key === 'name' ? name : key === 'tag' ? tag : whole));
  if (!text.startsWith('docker://')) text = `docker://${text}`;
  const path = text.slice('docker://'.length);
  const lastComponent = path.slice(path.lastIndexOf('/') + 1);
  if (!lastComponent.includes(':') && !lastComponent.includes('@')) text = `${text}:${tag}`;
  try {
    parseImageReference(text);
  } catch (err) {
    if (err instanceof ImageReferenceError) throw new UsageError(`--push ${template} gives ${text} for ${name}:${tag}, which is not a registry reference: ${err.message}`, { cause: err });
    throw err;
  }
  return text;
}

/** The registry host a template always names (null when the host itself comes from a placeholder). */
export function pushRegistry(template: string): string | null {
  const path = template.replace(/^docker:\/\//, '');
  const first = path.slice(0, path.indexOf('/') < 0 ? path.length : path.indexOf('/'));
  if (first.includes('{')) return null;
  return parseImageReference(pushTarget(template, 'dockvm/x', 'x')).registry ?? null;
}
