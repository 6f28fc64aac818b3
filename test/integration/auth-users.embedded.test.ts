import { runAuthUsersSuite } from "./auth-users.suite";

// The embedded store: PGlite under a temporary DATA_DIR, no servers needed.
runAuthUsersSuite("embedded");
