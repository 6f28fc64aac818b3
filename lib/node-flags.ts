/**
 * The V8 flags every Parley node runs with. `npm start` (package.json), the Dockerfile's CMD, the
 * test helpers and the benchmarks start nodes with them; test/unit/node-flags.test.ts keeps
 * package.json and the Dockerfile in step with this list.
 *
 * --max-semi-space-size=32: a young generation large enough for the short-lived objects of a
 * burst of messages (documents copied in and out of the store, contexts, frames) to die young
 * instead of being promoted. Measured on the embedded node at 800 msg/s for 20 s: scavenges
 * 268 → 142, mark-compacts 9 → 5, GC time 1,043 → 738 ms; `bench:chat --find-max` embedded
 * 550–713 msg/s without it, 1,050–1,475 with it (docs/performance.md). It costs up to 3 × 32 MiB
 * of RSS under load only: the young generation grows to it on demand.
 */
export const NODE_FLAGS: readonly string[] = ["--max-semi-space-size=32"];
