import { mongoUrlForTest, runChatSuite } from "./chat.suite";

// MongoDB through its wire protocol (FerretDB in CI), one fresh database for this file.
const url = process.env.TEST_MONGO_URL;
runChatSuite("mongo", url ? mongoUrlForTest(url) : null, url ? false : "TEST_MONGO_URL is not set: MongoDB chat suite skipped (.ci/run sets it when FerretDB is available)");
