/**
 * The API's files (REST), POST /users/upload-avatar and message attachments, over real HTTP.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { call, connectSocket, emitAck, type TestSocket } from "../helpers/sockets";
import { http, registerUser, startBroker, tempDir, waitFor, type RunningSystem } from "../helpers/system";

const PNG = Buffer.concat([Buffer.from("89504e470d0a1a0a0000000d49484452", "hex"), Buffer.alloc(200, 7)]);
const PDF = Buffer.from("%PDF-1.7\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n");
const EXE = Buffer.concat([Buffer.from("MZ\x90\x00\x03\x00\x00\x00", "latin1"), Buffer.alloc(100, 0)]);
export const FILE_LIMIT = 64 * 1024;
/** Each user's storage quota in this suite: four files of 60 KiB fit, a fifth does not. */
export const QUOTA = 4 * FILE_LIMIT;
const KiB = 1024;
const ZIP = Buffer.concat([Buffer.from("504b0304", "hex"), Buffer.alloc(100, 1)]);

export async function upload(base: string, token: string | null, route: "single" | "multiple", files: { field?: string; name: string; data: Buffer; type?: string }[]) {
	const form = new FormData();
	for (const f of files) form.append(f.field ?? (route === "single" ? "file" : "files"), new Blob([f.data], { type: f.type ?? "application/octet-stream" }), f.name);
	const res = await fetch(`${base}/upload/${route}`, { method: "POST", body: form, headers: token ? { authorization: `Bearer ${token}` } : {} });
	const text = await res.text();
	return { status: res.status, body: text ? JSON.parse(text) : null };
}

export function runFilesSuite(mode: "embedded" | "mongo", mongoUrl: string | null, skip: string | false = false) {
	describe(`files (${mode})`, { skip }, () => {
		let sys: RunningSystem;
		let base: string;
		let dataDir: string;
		let adminToken: string;
		const sockets: TestSocket[] = [];
		const filesDir = () => path.join(dataDir, "files");
		const filesStores = () =>
			(sys.broker.getLocalService("files") as unknown as { stores: Record<"files" | "file_usage", { count(q: object): Promise<number>; removeMany(q: object): Promise<number> }> })
				.stores;
		const storedCount = async (query: object = {}) => filesStores().files.count(query);
		const text = (n: number, fill = 97) => Buffer.alloc(n, fill);
		const status = async (url: string) => (await fetch(base + url)).status;

		before(async () => {
			dataDir = tempDir();
			process.env.DATA_DIR = dataDir;
			process.env.JWT_SECRET = "files-suite-secret-0123456789";
			process.env.BCRYPT_ROUNDS = "4";
			process.env.RATE_LIMIT = "0";
			process.env.RATE_LIMIT_AUTH = "0";
			process.env.FILE_MAX_BYTES = String(FILE_LIMIT);
			process.env.FILE_QUOTA_BYTES = String(QUOTA);
			process.env.ADMIN_EMAIL = "files-admin@example.test";
			process.env.ADMIN_PASSWORD = "files admin pw";
			delete process.env.DATABASE_URL;
			if (mongoUrl) process.env.MONGO_URL = mongoUrl;
			else delete process.env.MONGO_URL;
			sys = await startBroker(["api", "users", "files", "conversations", "messages"]);
			base = sys.baseUrl;
			adminToken = (await http(base, "POST", "/auth/login", { body: { email: "files-admin@example.test", password: "files admin pw" } })).body.accessToken;
		});

		after(async () => {
			for (const s of sockets) s.close();
			await sys?.stop();
			delete process.env.FILE_MAX_BYTES;
			delete process.env.FILE_QUOTA_BYTES;
		});

		it("uploads one file and serves its bytes with the stored type, length and disposition, without a token", async () => {
			const u = await registerUser(base, "up");
			const res = await upload(base, u.accessToken, "single", [{ name: "../../etc/cat picture.png", data: PNG, type: "image/png" }]);
			assert.equal(res.status, 201, JSON.stringify(res.body));
			const file = res.body;
			assert.match(file.fileId, /^[a-f0-9]{32}$/);
			assert.equal(file.url, `/files/${file.fileId}`);
			assert.equal(file.fileType, "image");
			assert.equal(file.fileName, "cat picture.png", "path parts are cleaned off the display name");
			assert.equal(file.size, PNG.length);
			assert.equal(file.mimetype, "image/png");
			// The stored name is the server's, never the client's.
			assert.deepEqual(fs.readdirSync(filesDir()).filter(n => n.includes(file.fileId)), [file.fileId]);
			assert.ok(!fs.readdirSync(filesDir()).some(n => n.includes("cat") || n.includes("..")));
			const got = await fetch(base + file.url);
			assert.equal(got.status, 200);
			assert.equal(got.headers.get("content-type"), "image/png");
			assert.equal(got.headers.get("content-length"), String(PNG.length));
			assert.equal(got.headers.get("x-content-type-options"), "nosniff");
			assert.match(got.headers.get("content-disposition") ?? "", /^inline; filename="cat picture.png"/);
			assert.deepEqual(Buffer.from(await got.arrayBuffer()), PNG);
		});

		it("serves byte ranges (for video seeking), and 416 for a range outside the file", async () => {
			const u = await registerUser(base, "rg");
			const { body: file } = await upload(base, u.accessToken, "single", [{ name: "doc.pdf", data: PDF }]);
			const part = await fetch(base + file.url, { headers: { range: "bytes=5-9" } });
			assert.equal(part.status, 206);
			assert.equal(part.headers.get("content-range"), `bytes 5-9/${PDF.length}`);
			assert.deepEqual(Buffer.from(await part.arrayBuffer()), PDF.subarray(5, 10));
			const tail = await fetch(base + file.url, { headers: { range: "bytes=-4" } });
			assert.deepEqual(Buffer.from(await tail.arrayBuffer()), PDF.subarray(PDF.length - 4));
			const whole = await fetch(base + file.url);
			assert.match(whole.headers.get("content-disposition") ?? "", /^attachment;/, "documents download");
			assert.equal((await fetch(base + file.url, { headers: { range: `bytes=${PDF.length + 10}-` } })).status, 416);
			assert.equal((await fetch(`${base}/files/${"0".repeat(32)}`)).status, 404);
			assert.equal((await fetch(`${base}/files/..%2F..%2Fetc%2Fpasswd`)).status, 404);
		});

		it("uploads several files at once, at most 10, all or nothing", async () => {
			const u = await registerUser(base, "mu");
			const ok = await upload(base, u.accessToken, "multiple", [
				{ name: "a.txt", data: Buffer.from("plain text") },
				{ name: "b.pdf", data: PDF },
				{ name: "c.png", data: PNG },
			]);
			assert.equal(ok.status, 201, JSON.stringify(ok.body));
			assert.deepEqual(ok.body.files.map((f: any) => [f.fileName, f.mimetype, f.fileType]), [
				["a.txt", "text/plain", "document"],
				["b.pdf", "application/pdf", "document"],
				["c.png", "image/png", "image"],
			]);
			const before = await storedCount();
			const onDisk = fs.readdirSync(filesDir()).length;
			const tooMany = await upload(base, u.accessToken, "multiple", Array.from({ length: 11 }, (_, i) => ({ name: `${i}.txt`, data: Buffer.from(`file ${i}`) })));
			assert.equal(tooMany.status, 400);
			const mixed = await upload(base, u.accessToken, "multiple", [
				{ name: "fine.txt", data: Buffer.from("fine") },
				{ name: "evil.exe", data: EXE },
			]);
			assert.equal(mixed.status, 415);
			await waitFor(async () => (await storedCount()) === before && fs.readdirSync(filesDir()).length === onDisk, 5000);
		});

		it("refuses what is too large (413), of a type not allowed (415), or sent wrongly (400, 401)", async () => {
			const u = await registerUser(base, "bad");
			const before = await storedCount();
			const onDisk = fs.readdirSync(filesDir()).length;
			const big = await upload(base, u.accessToken, "single", [{ name: "big.txt", data: Buffer.alloc(FILE_LIMIT + 1, 97) }]);
			assert.equal(big.status, 413);
			assert.equal(big.body.code, "PAYLOAD_TOO_LARGE");
			for (const [name, data] of [
				["tool.exe", EXE],
				["page.html", Buffer.from("<!DOCTYPE html><script>alert(1)</script>")],
				["image.svg", Buffer.from('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')],
				["claims-png.png", EXE],
			] as const) {
				const res = await upload(base, u.accessToken, "single", [{ name, data, type: "image/png" }]);
				assert.equal(res.status, 415, name);
				assert.equal(res.body.code, "UNSUPPORTED_MEDIA_TYPE");
			}
			// A wrong claim does not decide the type: a PDF claimed as an image is stored as a PDF.
			const claimed = await upload(base, u.accessToken, "single", [{ name: "photo.png", data: PDF, type: "image/png" }]);
			assert.equal(claimed.body.mimetype, "application/pdf");
			assert.equal(claimed.body.fileType, "document");
			assert.equal((await upload(base, u.accessToken, "single", [{ name: "empty.txt", data: Buffer.alloc(0) }])).status, 400);
			assert.equal((await upload(base, u.accessToken, "single", [{ field: "wrong", name: "a.txt", data: Buffer.from("x") }])).status, 400);
			assert.equal((await upload(base, null, "single", [{ name: "a.txt", data: Buffer.from("x") }])).status, 401);
			const notMultipart = await http(base, "POST", "/upload/single", { token: u.accessToken, body: { file: "x" } });
			assert.equal(notMultipart.status, 415);
			const b64big = await http(base, "POST", "/upload/file-base64", { token: u.accessToken, body: { fileName: "b.txt", base64: Buffer.alloc(FILE_LIMIT + 1, 97).toString("base64") } });
			assert.equal(b64big.status, 413);
			assert.equal((await http(base, "POST", "/upload/file-base64", { token: u.accessToken, body: { fileName: "b.txt", base64: "not base64!!" } })).status, 400);
			assert.equal((await http(base, "POST", "/upload/file-base64", { token: u.accessToken, body: { fileName: "x.exe", base64: EXE.toString("base64") } })).status, 415);
			assert.equal((await http(base, "POST", "/upload/file-base64", { token: u.accessToken, body: { base64: "aGk=" } })).status, 400);
			// Only the one good (claimed) upload was kept.
			assert.equal(await storedCount(), before + 1);
			assert.equal(fs.readdirSync(filesDir()).length, onDisk + 1);
		});

		it("an interrupted upload leaves no partial file behind", async () => {
			const u = await registerUser(base, "int");
			const before = await storedCount();
			const onDisk = fs.readdirSync(filesDir()).length;
			const boundary = "----parleyboundary";
			const head = `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="half.txt"\r\nContent-Type: text/plain\r\n\r\n`;
			const { port } = new URL(base);
			await new Promise<void>((resolve, reject) => {
				const socket = net.connect(Number(port), "127.0.0.1", () => {
					socket.write(
						`POST /upload/single HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${u.accessToken}\r\nContent-Type: multipart/form-data; boundary=${boundary}\r\nContent-Length: 60000\r\n\r\n${head}`,
					);
					socket.write(Buffer.alloc(20_000, 98));
					// The client goes away in the middle of the file.
					setTimeout(() => {
						socket.destroy();
						resolve();
					}, 300);
				});
				socket.on("error", reject);
			});
			await new Promise(r => setTimeout(r, 500));
			assert.equal(await storedCount(), before);
			assert.equal(fs.readdirSync(filesDir()).length, onDisk);
			assert.ok(!fs.readdirSync(filesDir()).some(n => n.endsWith(".part")));
		});

		it("deletes: the uploader or an admin only; bytes and metadata both go", async () => {
			const [a, b] = [await registerUser(base, "da"), await registerUser(base, "db")];
			const { body: file } = await upload(base, a.accessToken, "single", [{ name: "mine.txt", data: Buffer.from("mine") }]);
			assert.equal((await http(base, "DELETE", "/upload", { token: b.accessToken, body: { fileId: file.fileId } })).status, 403);
			assert.equal((await http(base, "DELETE", "/upload", { token: a.accessToken, body: {} })).status, 400);
			assert.equal((await http(base, "DELETE", "/upload", { token: a.accessToken, body: { fileUrl: `http://localhost:3000${file.url}` } })).status, 204);
			assert.ok(!fs.existsSync(path.join(filesDir(), file.fileId)));
			assert.equal((await fetch(base + file.url)).status, 404);
			assert.equal((await http(base, "DELETE", "/upload", { token: a.accessToken, body: { fileId: file.fileId } })).status, 404);
			const { body: other } = await upload(base, b.accessToken, "single", [{ name: "b.txt", data: Buffer.from("b's") }]);
			assert.equal((await http(base, "DELETE", "/upload", { token: adminToken, body: { fileUrl: other.url } })).status, 204);
		});

		it("attachments must be the sender's files; the message type follows the first one", async () => {
			const [a, b] = [await registerUser(base, "aa"), await registerUser(base, "ab")];
			const [sa, sb] = [await connectSocket(base, a.accessToken), await connectSocket(base, b.accessToken)];
			sockets.push(sa, sb);
			const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
			await call(sb, "conversation:accept", { conversationId: conv.id });
			const { body: img } = await upload(base, a.accessToken, "single", [{ name: "p.png", data: PNG }]);
			const { body: pdf } = await upload(base, a.accessToken, "single", [{ name: "d.pdf", data: PDF }]);
			const { body: bs } = await upload(base, b.accessToken, "single", [{ name: "b.png", data: PNG }]);
			const withImage = await call(sa, "message:send", { conversationId: conv.id, content: "look", attachments: [img.fileId, `http://localhost:3000${pdf.url}`] });
			assert.equal(withImage.type, "image");
			assert.deepEqual(withImage.attachments, [img.url, pdf.url]);
			const withFile = await call(sa, "message:send", { conversationId: conv.id, content: "", attachments: [pdf.url] });
			assert.equal(withFile.type, "file");
			const foreign = await emitAck(sa, "message:send", { conversationId: conv.id, content: "stolen", attachments: [bs.url] });
			assert.equal(foreign.error?.code, "FORBIDDEN");
			const unknown = await emitAck(sa, "message:send", { conversationId: conv.id, content: "x", attachments: ["0".repeat(32)] });
			assert.equal(unknown.error?.code, "VALIDATION_ERROR");
		});

		it("POST /users/upload-avatar stores an image and sets avatar_url; anything else is 415", async () => {
			const u = await registerUser(base, "av");
			const res = await http(base, "POST", "/users/upload-avatar", { token: u.accessToken, body: { fileName: "me.png", mimeType: "image/png", base64: PNG.toString("base64") } });
			assert.equal(res.status, 200, res.text);
			assert.match(res.body.url, /^\/files\/[a-f0-9]{32}$/);
			assert.equal(res.body.user.avatar_url, res.body.url);
			assert.equal((await http(base, "GET", "/users/me", { token: u.accessToken })).body.avatar_url, res.body.url);
			assert.equal((await fetch(base + res.body.url)).headers.get("content-type"), "image/png");
			const pdf = await http(base, "POST", "/users/upload-avatar", { token: u.accessToken, body: { fileName: "me.png", mimeType: "image/png", base64: PDF.toString("base64") } });
			assert.equal(pdf.status, 415);
			assert.equal((await http(base, "GET", "/users/me", { token: u.accessToken })).body.avatar_url, res.body.url, "unchanged");
			const b64 = await http(base, "POST", "/upload/file-base64", { token: u.accessToken, body: { fileName: "x.png", mimeType: "image/png", base64: `data:image/png;base64,${PNG.toString("base64")}` } });
			assert.equal(b64.status, 201);
			assert.equal(b64.body.fileType, "image");
		});

		it("serves a range only when it is one valid range; an invalid one gets the whole file, an empty suffix 416", async () => {
			const u = await registerUser(base, "rv");
			const { body: file } = await upload(base, u.accessToken, "single", [{ name: "doc.pdf", data: PDF }]);
			for (const range of ["bytes=9-5", "bytes=-", "bytes=0-1,4-5", "items=0-4"]) {
				const res = await fetch(base + file.url, { headers: { range } });
				assert.equal(res.status, 200, range);
				assert.deepEqual(Buffer.from(await res.arrayBuffer()), PDF, range);
			}
			const empty = await fetch(base + file.url, { headers: { range: "bytes=-0" } });
			assert.equal(empty.status, 416);
			assert.equal(empty.headers.get("content-range"), `bytes */${PDF.length}`);
			const huge = await fetch(base + file.url, { headers: { range: "bytes=2-99999999999999999999" } });
			assert.equal(huge.status, 206);
			assert.equal(huge.headers.get("content-range"), `bytes 2-${PDF.length - 1}/${PDF.length}`);
			assert.deepEqual(Buffer.from(await huge.arrayBuffer()), PDF.subarray(2));
		});

		it("a download's name carries the extension of what the bytes are, without invisible direction marks", async () => {
			const u = await registerUser(base, "nm");
			const cases: [string, Buffer, string][] = [
				["page.html", Buffer.from("hello <script>alert(1)</script>"), "page.html.txt"],
				["run.js", Buffer.from("console.log(1)"), "run.js.txt"],
				["notes.md", Buffer.from("# notes"), "notes.md"],
				["app.jar", ZIP, "app.jar.zip"],
				["photo\u202egnp.zip", ZIP, "photognp.zip"],
				["scan.png", PDF, "scan.png.pdf"],
				["it's (1).txt", Buffer.from("quote"), "it's (1).txt"],
			];
			for (const [name, data, stored] of cases) {
				const res = await upload(base, u.accessToken, "single", [{ name, data }]);
				assert.equal(res.status, 201, name);
				assert.equal(res.body.fileName, stored, name);
				const got = await fetch(base + res.body.url);
				const disposition = got.headers.get("content-disposition") ?? "";
				assert.ok(disposition.includes(`filename="${stored}"`), disposition);
				assert.ok(disposition.endsWith(`filename*=UTF-8''${encodeURIComponent(stored).replace(/['()*]/g, c => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)}`), disposition);
				if (res.body.mimetype.startsWith("text/")) assert.equal(got.headers.get("content-type"), `${res.body.mimetype}; charset=utf-8`, name);
			}
		});

		it("storage quota: an upload that does not fit is 413 with quota and used, keeps nothing, and a delete gives the bytes back", async () => {
			const [u, other] = [await registerUser(base, "qa"), await registerUser(base, "qb")];
			const kept: { fileId: string; url: string }[] = [];
			for (let i = 0; i < 4; i++) {
				const res = await upload(base, u.accessToken, "single", [{ name: `part${i}.txt`, data: text(60 * KiB) }]);
				assert.equal(res.status, 201, JSON.stringify(res.body));
				kept.push(res.body);
			}
			const before = await storedCount();
			const onDisk = fs.readdirSync(filesDir()).length;
			const over = await upload(base, u.accessToken, "single", [{ name: "fifth.txt", data: text(60 * KiB) }]);
			assert.equal(over.status, 413);
			assert.equal(over.body.code, "PAYLOAD_TOO_LARGE");
			assert.equal(over.body.message, "Storage quota exceeded: 240.0 KiB of 256.0 KiB used; delete files to upload more");
			assert.deepEqual(over.body.details, { quota: QUOTA, used: 240 * KiB });
			const overB64 = await http(base, "POST", "/upload/file-base64", { token: u.accessToken, body: { fileName: "fifth.txt", base64: text(60 * KiB).toString("base64") } });
			assert.equal(overB64.status, 413);
			assert.deepEqual(overB64.body.details, { quota: QUOTA, used: 240 * KiB });
			// Every file counts at least 4 KiB: what is left (16 KiB) takes four tiny files, not thousands.
			for (let i = 0; i < 4; i++) assert.equal((await upload(base, u.accessToken, "single", [{ name: `tiny${i}.txt`, data: Buffer.from("x") }])).status, 201);
			const tiny = await upload(base, u.accessToken, "single", [{ name: "tiny.txt", data: Buffer.from("x") }]);
			assert.equal(tiny.status, 413);
			assert.deepEqual(tiny.body.details, { quota: QUOTA, used: QUOTA });
			// Nothing of the refused uploads was kept, and another user is not affected.
			assert.equal(await storedCount(), before + 4);
			assert.equal(fs.readdirSync(filesDir()).length, onDisk + 4);
			assert.ok(!fs.readdirSync(filesDir()).some(n => n.endsWith(".part")));
			assert.equal((await upload(base, other.accessToken, "single", [{ name: "o.txt", data: text(60 * KiB) }])).status, 201);
			// A delete gives the bytes back: one 60 KiB file out, another in.
			assert.equal((await http(base, "DELETE", "/upload", { token: u.accessToken, body: { fileId: kept[0].fileId } })).status, 204);
			const again = await upload(base, u.accessToken, "single", [{ name: "again.txt", data: text(60 * KiB) }]);
			assert.equal(again.status, 201, JSON.stringify(again.body));
			// A multipart request whose second file does not fit keeps neither, and charges nothing.
			assert.equal((await http(base, "DELETE", "/upload", { token: u.accessToken, body: { fileId: kept[1].fileId } })).status, 204);
			const pair = await upload(base, u.accessToken, "multiple", [
				{ name: "one.txt", data: text(40 * KiB) },
				{ name: "two.txt", data: text(40 * KiB) },
			]);
			assert.equal(pair.status, 413);
			assert.deepEqual(pair.body.details, { quota: QUOTA, used: QUOTA - 20 * KiB }, "the first file counted while the second was refused");
			await waitFor(async () => (await upload(base, u.accessToken, "single", [{ name: "fits.txt", data: text(60 * KiB) }])).status === 201, 5000);
		});

		it("storage quota holds under concurrent uploads by one user", async () => {
			const u = await registerUser(base, "qc");
			const onDisk = fs.readdirSync(filesDir()).length;
			const results = await Promise.all(Array.from({ length: 9 }, (_, i) => upload(base, u.accessToken, "single", [{ name: `c${i}.txt`, data: text(60 * KiB, 97 + i) }])));
			const statuses = results.map(r => r.status).sort();
			assert.deepEqual(statuses, [201, 201, 201, 201, 413, 413, 413, 413, 413], JSON.stringify(results.map(r => r.body)));
			assert.equal(await storedCount({ owner_id: u.id }), 4);
			assert.equal(fs.readdirSync(filesDir()).length, onDisk + 4);
			// What is counted is exactly the four files kept.
			const next = await upload(base, u.accessToken, "single", [{ name: "next.txt", data: text(60 * KiB) }]);
			assert.equal(next.status, 413);
			assert.deepEqual(next.body.details, { quota: QUOTA, used: 240 * KiB });
		});

		it("storage quota holds when one user uploads through two nodes at once", { skip: mode === "mongo" ? false : "needs a database two nodes share (MongoDB)" }, async () => {
			// A second gateway and files service on the same database and disk: the two files
			// services race for the same user's quota with nothing in common but the database.
			const second = await startBroker(["api", "files"]);
			try {
				const u = await registerUser(base, "qn");
				const results = await Promise.all(
					Array.from({ length: 10 }, (_, i) => upload(i % 2 === 0 ? base : second.baseUrl, u.accessToken, "single", [{ name: `n${i}.txt`, data: text(60 * KiB, 97 + i) }])),
				);
				const statuses = results.map(r => r.status).sort();
				assert.deepEqual(statuses, [201, 201, 201, 201, 413, 413, 413, 413, 413, 413], JSON.stringify(results.map(r => r.body)));
				assert.equal(await storedCount({ owner_id: u.id }), 4);
				const next = await upload(second.baseUrl, u.accessToken, "single", [{ name: "next.txt", data: text(60 * KiB) }]);
				assert.equal(next.status, 413);
				assert.deepEqual(next.body.details, { quota: QUOTA, used: 240 * KiB });
			} finally {
				await second.stop();
			}
		});

		it("storage quota counts the files a user had before it was kept", async () => {
			const u = await registerUser(base, "qo");
			for (let i = 0; i < 4; i++) assert.equal((await upload(base, u.accessToken, "single", [{ name: `old${i}.txt`, data: text(60 * KiB) }])).status, 201);
			// As if these files had been uploaded before there was a quota: no usage is recorded.
			assert.ok((await filesStores().file_usage.removeMany({ owner_id: u.id })) > 0);
			const over = await upload(base, u.accessToken, "single", [{ name: "new.txt", data: text(60 * KiB) }]);
			assert.equal(over.status, 413);
			assert.deepEqual(over.body.details, { quota: QUOTA, used: 240 * KiB });
		});

		it("files.verifyImage: only /files/<id> of an image the owner uploaded", async () => {
			const [a, b] = [await registerUser(base, "va"), await registerUser(base, "vb")];
			const { body: img } = await upload(base, a.accessToken, "single", [{ name: "a.png", data: PNG }]);
			const { body: pdf } = await upload(base, a.accessToken, "single", [{ name: "a.pdf", data: PDF }]);
			const verify = (ref: string, ownerId: number) => sys.broker.call("files.verifyImage", { ref, ownerId }).then(
				file => ({ file, error: null as any }),
				error => ({ file: null, error }),
			);
			assert.deepEqual((await verify(img.url, a.id)).file, img);
			for (const ref of ["https://evil.example/x.png", img.fileId, `http://localhost:3000${img.url}`, `${img.url}?x=1`, `/files/${"0".repeat(32)}`, pdf.url]) {
				const { error } = await verify(ref, a.id);
				assert.equal(error?.type, "VALIDATION_ERROR", ref);
				assert.equal(error.data[0].field, "avatar", ref);
			}
			const foreign = await verify(img.url, b.id);
			assert.equal(foreign.error?.type, "FORBIDDEN");
			assert.equal(foreign.error.message, "Use an image you uploaded");
		});

		it("avatar_url and a group's avatar must be an image the user uploaded here", async () => {
			const [a, b] = [await registerUser(base, "pa"), await registerUser(base, "pb")];
			const { body: img } = await upload(base, a.accessToken, "single", [{ name: "a.png", data: PNG }]);
			const { body: pdf } = await upload(base, a.accessToken, "single", [{ name: "a.pdf", data: PDF }]);
			const { body: theirs } = await upload(base, b.accessToken, "single", [{ name: "b.png", data: PNG }]);
			const setAvatar = (avatar_url: string | null) => http(base, "PATCH", `/users/${a.id}`, { token: a.accessToken, body: { avatar_url } });
			for (const ref of ["https://evil.example/x.png", pdf.url]) {
				const res = await setAvatar(ref);
				assert.equal(res.status, 400, `${ref}: ${res.text}`);
				assert.equal(res.body.code, "VALIDATION_ERROR");
			}
			assert.equal((await setAvatar(theirs.url)).status, 403);
			assert.equal((await http(base, "GET", "/users/me", { token: a.accessToken })).body.avatar_url, null, "unchanged");
			const ok = await setAvatar(img.url);
			assert.equal(ok.status, 200, ok.text);
			assert.equal(ok.body.avatar_url, img.url);

			const group = await http(base, "POST", "/conversations", { token: a.accessToken, body: { type: "group", participants: [b.id], name: "pics" } });
			assert.equal(group.status, 201, group.text);
			const setGroupAvatar = (avatar: string) => http(base, "PATCH", `/conversations/${group.body.id}`, { token: a.accessToken, body: { avatar } });
			assert.equal((await setGroupAvatar("https://evil.example/x.png")).status, 400);
			assert.equal((await setGroupAvatar(pdf.url)).status, 400);
			assert.equal((await setGroupAvatar(theirs.url)).status, 403);
			const groupOk = await setGroupAvatar(img.url);
			assert.equal(groupOk.status, 200, groupOk.text);
			assert.equal(groupOk.body.avatar, img.url);
		});

		it("a deleted message's attachment is deleted with it, unless another message still uses it", async () => {
			const [a, b] = [await registerUser(base, "ra"), await registerUser(base, "rb")];
			const [sa, sb] = [await connectSocket(base, a.accessToken), await connectSocket(base, b.accessToken)];
			sockets.push(sa, sb);
			const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
			await call(sb, "conversation:accept", { conversationId: conv.id });
			const { body: only } = await upload(base, a.accessToken, "single", [{ name: "only.png", data: PNG }]);
			const { body: shared } = await upload(base, a.accessToken, "single", [{ name: "shared.pdf", data: PDF }]);
			const first = await call(sa, "message:send", { conversationId: conv.id, content: "both", attachments: [only.url, shared.url] });
			const second = await call(sa, "message:send", { conversationId: conv.id, content: "again", attachments: [shared.url] });
			assert.equal((await emitAck(sa, "message:delete", { messageId: first.id })).ok, true);
			await waitFor(async () => (await status(only.url)) === 404, 5000);
			assert.ok(!fs.existsSync(path.join(filesDir(), only.fileId)), "its bytes are gone too");
			assert.equal(await status(shared.url), 200, "still attached to the second message");
			assert.equal((await emitAck(sa, "message:delete", { messageId: second.id })).ok, true);
			await waitFor(async () => (await status(shared.url)) === 404, 5000);
			assert.equal(await storedCount({ owner_id: a.id }), 0);
		});

		it("a replaced avatar's file is deleted; the new one stays", async () => {
			const u = await registerUser(base, "rav");
			const avatar = () => http(base, "POST", "/users/upload-avatar", { token: u.accessToken, body: { fileName: "me.png", mimeType: "image/png", base64: PNG.toString("base64") } });
			const first = await avatar();
			assert.equal(first.status, 200, first.text);
			const second = await avatar();
			assert.equal(second.status, 200, second.text);
			await waitFor(async () => (await status(first.body.url)) === 404, 5000);
			assert.equal(await status(second.body.url), 200);
			assert.equal((await http(base, "GET", "/users/me", { token: u.accessToken })).body.avatar_url, second.body.url);
			assert.equal(await storedCount({ owner_id: u.id }), 1);
		});
	});
}
