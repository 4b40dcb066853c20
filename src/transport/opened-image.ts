// What opening an image by reference gives, whatever the transport: its own module so that open.ts
// (which dispatches on the transport) and the transports it calls (registry-image.ts) both import it
// without importing each other.
import type { Image } from '../image/image.js';

export interface OpenedImage extends Image {
  /** the reference it was opened by, as written */
  readonly reference: string;
  /** release the archive (removes any temp files); safe to call more than once */
  close(): Promise<void>;
}
