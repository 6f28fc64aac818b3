import { runMessagingSuite } from "./messaging.suite";

// The embedded document store: NeDB files under a temporary DATA_DIR.
runMessagingSuite("embedded", null);
