import { runFilesSuite } from "./files.suite";

// Metadata in the embedded document store, bytes under a temporary DATA_DIR.
runFilesSuite("embedded", null);
