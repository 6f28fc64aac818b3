import { runMentionsSuite } from "./mentions.suite";

// The embedded document store: NeDB files under a temporary DATA_DIR.
runMentionsSuite("embedded", null);
