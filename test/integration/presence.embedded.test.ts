import { runPresenceSuite } from "./presence.suite";

// The embedded users store: PGlite under a temporary DATA_DIR, no servers needed.
runPresenceSuite("embedded");
