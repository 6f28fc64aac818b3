import { runChatSuite } from "./chat.suite";

// The embedded document store: NeDB files under a temporary DATA_DIR.
runChatSuite("embedded", null);
