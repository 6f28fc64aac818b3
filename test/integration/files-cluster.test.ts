/**
 * An upload through a gateway node whose files service runs on another broker: the file is
 * streamed over RabbitMQ (Moleculer streams) and served back from there.
 */
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { registerUser, skipWithoutAmqp, startBroker, TEST_AMQP_URL, tempDir, type RunningSystem } from "../helpers/system";
import { FILE_LIMIT, upload } from "./files.suite";

describe("uploads across nodes over RabbitMQ", { skip: skipWithoutAmqp }, () => {
	let gateway: RunningSystem;
	let backend: RunningSystem;
	let dataDir: string;

	before(async () => {
		dataDir = tempDir();
		process.env.DATA_DIR = dataDir;
		process.env.JWT_SECRET = "files-cluster-secret-0123456789";
		process.env.BCRYPT_ROUNDS = "4";
		process.env.RATE_LIMIT = "0";
		process.env.RATE_LIMIT_AUTH = "0";
		process.env.FILE_MAX_BYTES = String(FILE_LIMIT);
		delete process.env.DATABASE_URL;
		delete process.env.MONGO_URL;
		const shared = {
			namespace: `parley-files-${crypto.randomBytes(4).toString("hex")}`,
			transporter: { type: "AMQP", options: { url: TEST_AMQP_URL, socketOptions: { noDelay: true }, prefetch: 100, autoDeleteQueues: 60_000 } },
		};
		backend = await startBroker(["users", "files"], shared);
		gateway = await startBroker(["api"], shared);
		await gateway.broker.waitForServices(["users", "files"], 30_000);
	});

	after(async () => {
		await gateway?.stop();
		await backend?.stop();
		delete process.env.FILE_MAX_BYTES;
	});

	it("streams the file to the other node, serves it back intact, and refuses an oversized one there", async () => {
		const u = await registerUser(gateway.baseUrl, "xf");
		const data = crypto.randomBytes(60 * 1024);
		const text = Buffer.from(data.toString("hex").slice(0, 50_000));
		const res = await upload(gateway.baseUrl, u.accessToken, "single", [{ name: "notes.txt", data: text }]);
		assert.equal(res.status, 201, JSON.stringify(res.body));
		assert.equal(res.body.size, text.length);
		const got = await fetch(gateway.baseUrl + res.body.url);
		assert.equal(got.status, 200);
		assert.deepEqual(Buffer.from(await got.arrayBuffer()), text);
		const ranged = await fetch(gateway.baseUrl + res.body.url, { headers: { range: "bytes=100-199" } });
		assert.equal(ranged.status, 206);
		assert.deepEqual(Buffer.from(await ranged.arrayBuffer()), text.subarray(100, 200));

		const filesBefore = fs.readdirSync(path.join(dataDir, "files")).length;
		const big = await upload(gateway.baseUrl, u.accessToken, "single", [{ name: "big.txt", data: Buffer.alloc(FILE_LIMIT + 10, 97) }]);
		assert.equal(big.status, 413);
		await new Promise(r => setTimeout(r, 300));
		assert.equal(fs.readdirSync(path.join(dataDir, "files")).length, filesBefore, "nothing kept");
	});
});
