// What the executor tells its caller while it builds, for progress as BuildKit shows it (src/cli/build.ts):
// each step of each stage as a numbered vertex ("#3 [build 2/4] RUN make"), CACHED or its output, DONE.
export type BuildEvent =
  /** a step starts, or is found in the cache; `name` is "[stage 2/4] RUN …" */
  | { type: 'vertex'; id: number; name: string }
  | { type: 'cached'; id: number }
  /** output of a RUN, as it comes */
  | { type: 'output'; id: number; chunk: Buffer }
  | { type: 'done'; id: number; seconds: number }
  /** the build VM of a stage boots, for `steps` steps */
  | { type: 'boot'; stage: string; steps: number }
  | { type: 'warning'; message: string };

/** Takes the executor's events; a promise (from an output event) slows the guest down until it settles. */
export type BuildEventSink = (event: BuildEvent) => void | Promise<void>;
