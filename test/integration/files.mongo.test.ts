import { mongoUrlForTest } from "./chat.suite";
import { runFilesSuite } from "./files.suite";

// File metadata in MongoDB (FerretDB in CI), one fresh database for this file.
const url = process.env.TEST_MONGO_URL;
runFilesSuite("mongo", url ? mongoUrlForTest(url) : null, url ? false : "TEST_MONGO_URL is not set: MongoDB files suite skipped (.ci/run sets it when FerretDB is available)");
