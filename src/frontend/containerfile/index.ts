// The Containerfile front end: planContainerfile turns a Containerfile and its build context into a
// Plan (src/plan/plan.ts) for the executor. Nothing here touches a VM or an image's layers.
export { planContainerfile, type BaseImage, type BaseRequest, type PlanContainerfileOptions, type ResolveBase } from './planner.js';
export { ContainerfileError } from './errors.js';
