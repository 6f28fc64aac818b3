import { mongoUrlForTest } from "../helpers/system";
import { runMentionsSuite } from "./mentions.suite";

// MongoDB through its wire protocol (FerretDB in CI), one fresh database for this file.
const url = process.env.TEST_MONGO_URL;
runMentionsSuite("mongo", url ? mongoUrlForTest(url) : null, url ? false : "TEST_MONGO_URL is not set: MongoDB mentions suite skipped (.ci/run sets it when FerretDB is available)");
