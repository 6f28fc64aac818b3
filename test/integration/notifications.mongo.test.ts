import { mongoUrlForTest } from "./chat.suite";
import { runNotificationsSuite } from "./notifications.suite";

// MongoDB through its wire protocol (FerretDB in CI), one fresh database for this file.
const url = process.env.TEST_MONGO_URL;
runNotificationsSuite("mongo", url ? mongoUrlForTest(url) : null, url ? false : "TEST_MONGO_URL is not set: MongoDB notifications suite skipped (.ci/run sets it when FerretDB is available)");
