/**
 * Bumped whenever dockvm would build different layer bytes from the same inputs (a new normalisation
 * rule, a different tar encoding), so that every refresh lock and build cache key made before it is stale.
 */
export const LAYER_FORMAT_VERSION = 1;
