/**
 * The files service on a broker unlike the files suite's: no conversations and no messages
 * service (so files.release cannot ask them), and a short request timeout (1.5 s).
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { http, registerUser, startBroker, tempDir, waitFor, type RunningSystem } from "../helpers/system";
import { upload } from "./files.suite";

const PNG = Buffer.concat([Buffer.from("89504e470d0a1a0a0000000d49484452", "hex"), Buffer.alloc(200, 7)]);

const REQUEST_TIMEOUT = 1500;

describe("files on a broker of their own", () => {
	let sys: RunningSystem;
	let dataDir: string;

	before(async () => {
		dataDir = tempDir();
		process.env.DATA_DIR = dataDir;
		process.env.JWT_SECRET = "files-release-secret-0123456789";
		process.env.BCRYPT_ROUNDS = "4";
		process.env.RATE_LIMIT = "0";
		process.env.RATE_LIMIT_AUTH = "0";
		delete process.env.DATABASE_URL;
		delete process.env.MONGO_URL;
		// What a node that died mid-upload left: an old half-written file, and one being written now.
		fs.mkdirSync(path.join(dataDir, "files"), { recursive: true });
		fs.writeFileSync(path.join(dataDir, "files", `${"a".repeat(32)}.0badf00d.part`), "half");
		const twoHoursAgo = new Date(Date.now() - 2 * 3600_000);
		fs.utimesSync(path.join(dataDir, "files", `${"a".repeat(32)}.0badf00d.part`), twoHoursAgo, twoHoursAgo);
		fs.writeFileSync(path.join(dataDir, "files", `${"b".repeat(32)}.0badf00d.part`), "in progress");
		sys = await startBroker(["api", "users", "files"], { requestTimeout: REQUEST_TIMEOUT });
	});

	after(async () => {
		await sys?.stop();
	});

	it("removes half-written uploads a stopped node left, but not one that may still be written", async () => {
		await waitFor(async () => !fs.existsSync(path.join(dataDir, "files", `${"a".repeat(32)}.0badf00d.part`)), 5000);
		assert.ok(fs.existsSync(path.join(dataDir, "files", `${"b".repeat(32)}.0badf00d.part`)));
	});

	it("keeps a released file when a service that may use it cannot answer", async () => {
		const u = await registerUser(sys.baseUrl, "rel");
		const { status, body: file } = await upload(sys.baseUrl, u.accessToken, "single", [{ name: "kept.png", data: PNG }]);
		assert.equal(status, 201);
		const released = await sys.broker.call("files.release", { fileIds: [file.fileId, file.url, "https://evil.example/x.png"] });
		assert.deepEqual(released, []);
		assert.equal((await fetch(sys.baseUrl + file.url)).status, 200);
		assert.ok(fs.existsSync(path.join(dataDir, "files", file.fileId)));
		// A replaced avatar asks for the same: the first picture stays.
		const avatar = () => http(sys.baseUrl, "POST", "/users/upload-avatar", { token: u.accessToken, body: { fileName: "me.png", base64: PNG.toString("base64") } });
		const first = await avatar();
		assert.equal(first.status, 200, first.text);
		assert.equal((await avatar()).status, 200);
		await new Promise(resolve => setTimeout(resolve, 300));
		assert.equal((await fetch(sys.baseUrl + first.body.url)).status, 200);
	});

	it("a multipart upload slower than the request timeout is stored, not cut off", async () => {
		const u = await registerUser(sys.baseUrl, "slow");
		const boundary = "----parleyslow";
		const head = `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.txt"\r\nContent-Type: text/plain\r\n\r\n`;
		const tail = `\r\n--${boundary}--\r\n`;
		const chunks = Array.from({ length: 6 }, (_, i) => Buffer.alloc(1000, 97 + i));
		const length = Buffer.byteLength(head) + chunks.length * 1000 + Buffer.byteLength(tail);
		const started = Date.now();
		const response = await new Promise<string>((resolve, reject) => {
			const socket = net.connect(sys.port, "127.0.0.1", async () => {
				socket.write(
					`POST /upload/single HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${u.accessToken}\r\nContent-Type: multipart/form-data; boundary=${boundary}\r\nContent-Length: ${length}\r\nConnection: close\r\n\r\n${head}`,
				);
				// A slow line: the file takes twice the request timeout to arrive.
				for (const chunk of chunks) {
					socket.write(chunk);
					await new Promise(r => setTimeout(r, (2 * REQUEST_TIMEOUT) / chunks.length));
				}
				socket.write(tail);
			});
			let got = "";
			socket.on("data", d => (got += d.toString("utf8")));
			socket.on("end", () => resolve(got));
			socket.on("error", reject);
		});
		assert.ok(Date.now() - started > 2 * REQUEST_TIMEOUT - 100);
		assert.match(response, /^HTTP\/1\.1 201 /, response);
		const file = JSON.parse(response.slice(response.indexOf("\r\n\r\n") + 4));
		assert.equal(file.size, 6000);
		const got = await fetch(sys.baseUrl + file.url);
		assert.deepEqual(Buffer.from(await got.arrayBuffer()), Buffer.concat(chunks));
	});
});
