import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, afterEach, describe, it, mock } from "node:test";
import { createEmbeddedAdapter, type EmbeddedAdapter, type EmbeddedStoreOptions, serializeDoc } from "../../lib/embedded-doc-store";

const NeDB: new (options: Record<string, unknown>) => any = require("@seald-io/nedb");
const nedbModel: { serialize(doc: unknown): string } = require("@seald-io/nedb/lib/model.js");

const root = fs.mkdtempSync(path.join(os.tmpdir(), "parley-eds-"));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let files = 0;
const newFile = () => path.join(root, `c${++files}`, "messages.db");

const open: EmbeddedAdapter[] = [];
afterEach(async () => {
	mock.restoreAll();
	for (const a of open.splice(0)) await a.disconnect().catch(() => undefined);
});

async function connect(file: string, options: EmbeddedStoreOptions = {}): Promise<any> {
	const adapter = createEmbeddedAdapter(file, options);
	await adapter.connect();
	open.push(adapter);
	// As the docs mixin prepares a store: single-field indexes, some unique.
	await adapter.db.ensureIndex({ fieldName: "seq_key", unique: true });
	await adapter.db.ensureIndex({ fieldName: "conversation_id" });
	await adapter.db.ensureIndex({ fieldName: "notified" });
	return adapter;
}

async function close(adapter: any) {
	await adapter.disconnect();
	open.splice(open.indexOf(adapter), 1);
}

/** The documents in the file as stock NeDB loads it, by _id. */
async function loadWithStockNedb(file: string): Promise<Map<string, any>> {
	const copy = `${file}.stock-${Math.random().toString(36).slice(2)}`;
	fs.copyFileSync(file, copy);
	const db = new NeDB({ filename: copy });
	await db.loadDatabaseAsync();
	const docs = await db.findAsync({});
	return new Map(docs.map((d: any) => [d._id, d]));
}

async function allDocs(adapter: any): Promise<Map<string, any>> {
	const docs = await adapter.find({ query: {} });
	return new Map(docs.map((d: any) => [d._id, d]));
}

const doc = (i: number) => ({ conversation_id: `c${i % 7}`, seq: i, seq_key: `c${i % 7}:${i}`, content: `message ${i}`, notified: false, created_at: new Date(1_700_000_000_000 + i), seen_by: [] });

/**
 * Counts write(2) calls on files while it runs: fs.writeSync (a small batch) and fs.write (a big
 * one, through the thread pool). Standard output and error (fd 1, 2) are not the store's.
 */
function countWrites() {
	let count = 0;
	for (const name of ["write", "writeSync"] as const) {
		const original = fs[name];
		mock.method(fs, name, function (this: unknown, ...args: any[]) {
			if (typeof args[0] === "number" && args[0] > 2) count++;
			return (original as any).apply(this, args);
		});
	}
	return () => count;
}

describe("embedded document store (NeDB with batched persistence)", () => {
	it("writes a line in NeDB's own format (model.serialize), faster", () => {
		const samples = [
			{ _id: "a", n: 1, s: "x\u00e9\u{1F600}\n\"", b: true, nil: null, und: undefined, arr: [1, "2", null, undefined, { d: new Date(5) }], d: new Date(1_700_000_000_123) },
			{ _id: "b", nested: { deeper: { at: new Date(0), list: [new Date(7), [new Date(8)]] }, empty: {} }, e: [] },
			{ _id: "c", $$deleted: true },
			{ $$indexCreated: { fieldName: "seq_key", unique: true, sparse: false } },
			{ _id: "d", "1": "numeric key first", z: 1, a: 2 },
		];
		for (const s of samples) assert.equal(serializeDoc(s), nedbModel.serialize(s));
	});

	it("puts concurrent writes in one or a few appends, resolves each only once written, and reloads them", async () => {
		const file = newFile();
		const store = await connect(file);
		const writes = countWrites();
		const onDisk: boolean[] = [];
		const inserted = await Promise.all(
			Array.from({ length: 500 }, (_, i) =>
				store.insert(doc(i)).then((d: any) => {
					// Acknowledged means handed to the OS: the line is in the file now.
					onDisk.push(fs.readFileSync(file, "utf8").includes(`"_id":"${d._id}"`));
					return d;
				}),
			),
		);
		assert.ok(onDisk.every(Boolean), "every insert was in the file when it resolved");
		assert.ok(writes() >= 1 && writes() <= 2, `500 concurrent inserts took ${writes()} writes`);

		const before = writes();
		const counts = await Promise.all(inserted.map((d: any, i: number) => (i % 2 ? store.updateById(d._id, { $set: { notified: true } }) : store.updateMany({ _id: d._id }, { $set: { content: "edited" } }))));
		assert.equal(counts.filter(Boolean).length, 500);
		assert.ok(writes() - before >= 1 && writes() - before <= 2, `500 concurrent updates took ${writes() - before} writes`);
		assert.equal(await store.removeMany({ conversation_id: "c3" }), inserted.filter((d: any) => d.conversation_id === "c3").length);
		// A write that changes nothing resolves and writes nothing.
		assert.equal(await store.updateMany({ _id: "none" }, { $set: { x: 1 } }), 0);

		const expected = await allDocs(store);
		assert.equal(expected.size, 500 - inserted.filter((d: any) => d.conversation_id === "c3").length);
		assert.ok(store.stats().writes <= 6, JSON.stringify(store.stats()));
		await close(store);
		assert.deepEqual(await loadWithStockNedb(file), expected, "stock NeDB reads the file");
		const again = await connect(file);
		assert.deepEqual(await allDocs(again), expected, "the store reads it back");
		assert.deepEqual(Object.keys(again.db.indexes).sort(), ["_id", "conversation_id", "notified", "seq_key"]);
		assert.equal(again.db.indexes.seq_key.unique, true);
	});

	it("shows a read nothing that is not written yet", async () => {
		const file = newFile();
		const store = await connect(file);
		// Not awaited: the read that finds it comes back only once it is in the file.
		const writes = Array.from({ length: 20 }, (_, i) => store.insert(doc(i)));
		const found = await store.findOne({ seq_key: "c5:5" });
		assert.equal(found.seq, 5);
		assert.ok(fs.readFileSync(file, "utf8").includes(`"_id":"${found._id}"`));
		assert.equal(await store.count({ query: {} }), 20);
		await Promise.all(writes);
	});

	it("opens a data file stock NeDB wrote, updates and deletes included", async () => {
		const file = newFile();
		fs.mkdirSync(path.dirname(file), { recursive: true });
		const stock = new NeDB({ filename: file });
		await stock.loadDatabaseAsync();
		await stock.ensureIndexAsync({ fieldName: "seq_key", unique: true });
		const a = await stock.insertAsync(doc(1));
		const b = await stock.insertAsync(doc(2));
		await stock.updateAsync({ _id: a._id }, { $set: { content: "changed" } });
		await stock.removeAsync({ _id: b._id });
		const store = await connect(file);
		assert.deepEqual([...(await allDocs(store)).values()], [{ ...a, content: "changed" }]);
		await assert.rejects(store.insert({ ...doc(1), _id: undefined }), (err: any) => err.errorType === "uniqueViolated");
	});

	it("rejects only the write that breaks a unique index, the rest of its batch is written", async () => {
		const file = newFile();
		const store = await connect(file);
		const writes = countWrites();
		const results = await Promise.allSettled(Array.from({ length: 50 }, (_, i) => store.insert(i === 20 ? doc(10) : doc(i))));
		const rejected = results.filter(r => r.status === "rejected");
		assert.equal(rejected.length, 1);
		assert.equal((results[20] as PromiseRejectedResult).reason.errorType, "uniqueViolated");
		assert.ok(writes() >= 1 && writes() <= 2, `${writes()} writes`);
		await close(store);
		const docs = await loadWithStockNedb(file);
		assert.equal(docs.size, 49);
		assert.deepEqual([...docs.values()].map(d => d.seq).sort((x, y) => x - y), Array.from({ length: 50 }, (_, i) => i).filter(i => i !== 20));
	});

	it("writes a big batch through the thread pool, a small one synchronously, both acknowledged once written", async () => {
		const file = newFile();
		const store = await connect(file);
		const calls = { write: 0, writeSync: 0 };
		for (const name of ["write", "writeSync"] as const) {
			const original = fs[name];
			mock.method(fs, name, function (this: unknown, ...args: any[]) {
				if (typeof args[0] === "number" && args[0] > 2) calls[name]++;
				return (original as any).apply(this, args);
			});
		}
		// 400 documents of 1 KiB in one turn: one batch of more than 256 KiB.
		const big = await Promise.all(Array.from({ length: 400 }, (_, i) => store.insert({ ...doc(i), content: "x".repeat(1024) })));
		assert.equal(big.length, 400);
		assert.ok(calls.write >= 1, `the big batch went through fs.write: ${JSON.stringify(calls)}`);
		assert.ok(fs.statSync(file).size > 400 * 1024, "written before the acknowledgements");
		const before = calls.writeSync;
		await store.insert(doc(1000));
		assert.equal(calls.writeSync, before + 1, "a small batch: one writeSync");
		await close(store);
		assert.equal((await loadWithStockNedb(file)).size, 401);
	});

	it("rejects the writes waiting on a failed write; their lines go with the next write", async () => {
		const file = newFile();
		const store = await connect(file);
		// A batch this small is written with writeSync (SYNC_WRITE_MAX_BYTES).
		const original = fs.writeSync;
		let fail = true;
		let calls = 0;
		mock.method(fs, "writeSync", function (this: unknown, ...args: any[]) {
			if (!(typeof args[0] === "number" && args[0] > 2)) return (original as any).apply(this, args);
			calls++;
			if (!fail) return (original as any).apply(this, args);
			fail = false;
			// Half the batch reaches the file, then the disk gives up.
			const [fd, buf, off, len] = args;
			(original as any).call(fs, fd, buf, off, Math.floor(len / 2));
			throw Object.assign(new Error("EIO: i/o error, write"), { code: "EIO" });
		});
		const failed = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => store.insert(doc(i))));
		assert.ok(failed.every(r => r.status === "rejected" && (r.reason as any).code === "EIO"), "every write of the failed batch rejects");
		// The partial batch was cut off: every line in the file is whole.
		for (const line of fs.readFileSync(file, "utf8").split("\n").filter(Boolean)) JSON.parse(line);
		await new Promise(r => setTimeout(r, 50));
		assert.equal(calls, 1, "no retry loop: the failed batch waits for the next write");

		const ok = await store.insert(doc(100));
		assert.equal(ok.seq, 100);
		const expected = await allDocs(store);
		assert.equal(expected.size, 21, "NeDB keeps a change whose write failed in memory, as stock");
		await close(store);
		assert.deepEqual(await loadWithStockNedb(file), expected, "the file caught up with memory");
		for (const line of fs.readFileSync(file, "utf8").split("\n").filter(Boolean)) JSON.parse(line);
	});

	it("compacts past the bound, in the background of writes, and loses none of them", async () => {
		const file = newFile();
		const store = await connect(file, { compactRatio: 2, compactMinBytes: 64 * 1024, compactChunkDocs: 100 });
		const docs = await Promise.all(Array.from({ length: 600 }, (_, i) => store.insert(doc(i))));
		let maxRatio = 0;
		let ackedDuringCompaction = 0;
		for (let round = 0; round < 25; round++) {
			await Promise.all(
				docs.map((d: any) =>
					store.updateById(d._id, { $set: { content: `round ${round} ${"x".repeat(round % 5)}` } }).then(() => {
						if (store.stats().compacting) ackedDuringCompaction++;
					}),
				),
			);
			const s = store.stats();
			// Past the bound a compaction is running: never a file over it without one.
			if (!s.compacting) maxRatio = Math.max(maxRatio, s.fileBytes / s.liveBytes);
		}
		while (store.stats().compacting) await new Promise(r => setTimeout(r, 5));
		const stats = store.stats();
		assert.ok(stats.compactions >= 2, JSON.stringify(stats));
		assert.ok(ackedDuringCompaction > 0, "writes were acknowledged while a compaction ran");
		assert.ok(maxRatio <= 2.05, `file/live reached ${maxRatio.toFixed(2)} with no compaction running`);
		assert.ok(stats.fileBytes <= 2.05 * stats.liveBytes, JSON.stringify(stats));

		// An explicit compaction with writes going on: the new file has them all.
		const during = Promise.all(docs.map((d: any) => store.updateById(d._id, { $set: { content: "last" } })));
		await Promise.all([store.compact(), during]);
		const expected = await allDocs(store);
		assert.ok([...expected.values()].every(d => d.content === "last"));
		await close(store);
		assert.ok(!fs.existsSync(`${file}~`), "no temporary file left");
		assert.deepEqual(await loadWithStockNedb(file), expected);
	});

	it("does not compact a small file, and a compaction with no garbage still reloads the same", async () => {
		const file = newFile();
		const store = await connect(file);
		const docs = await Promise.all(Array.from({ length: 100 }, (_, i) => store.insert(doc(i))));
		for (let round = 0; round < 5; round++) await Promise.all(docs.map((d: any) => store.updateById(d._id, { $set: { round } })));
		assert.equal(store.stats().compactions, 0, "under compactMinBytes (4 MiB by default)");
		assert.ok(store.stats().fileBytes > 4 * store.stats().liveBytes);
		await store.compact();
		const s = store.stats();
		assert.equal(s.compactions, 1);
		assert.ok(s.fileBytes < s.liveBytes * 1.05, JSON.stringify(s));
		const expected = await allDocs(store);
		await close(store);
		assert.deepEqual(await loadWithStockNedb(file), expected);
	});

	it("writes what is queued on disconnect, and connects again", async () => {
		const file = newFile();
		const store = await connect(file);
		// Not awaited: disconnect must still write them.
		const pending = Array.from({ length: 30 }, (_, i) => store.insert(doc(i)));
		await store.disconnect();
		open.splice(open.indexOf(store), 1);
		await Promise.all(pending);
		assert.equal((await loadWithStockNedb(file)).size, 30);
		await store.connect();
		open.push(store);
		assert.equal(await store.count({ query: {} }), 30);
		await store.insert(doc(30));
		assert.equal(await store.count({ query: { conversation_id: "c2" } }), 5);
	});
});

describe("NeDB index upkeep on update (unchanged keys kept in place)", () => {
	it("finds updated documents through every index, and a failed unique update changes nothing", async () => {
		const dir = fs.mkdtempSync(path.join(os.tmpdir(), "eds-idx-"));
		const adapter = createEmbeddedAdapter(path.join(dir, "m.db"));
		await adapter.connect();
		const db = adapter.db;
		await db.ensureIndexAsync({ fieldName: "conversation_id" });
		await db.ensureIndexAsync({ fieldName: "seq_key", unique: true });
		await db.ensureIndexAsync({ fieldName: "outbox", sparse: true });
		const docs = [];
		for (let i = 0; i < 50; i++) docs.push(await db.insertAsync({ conversation_id: `c${i % 3}`, seq_key: `k${i}`, outbox: true, n: i }));
		// Unchanged keys (conversation_id, seq_key), one removed from a sparse index (outbox).
		await db.updateAsync({ conversation_id: "c1" }, { $set: { n: -1 }, $unset: { outbox: true } }, { multi: true });
		const c1 = await db.findAsync({ conversation_id: "c1" });
		assert.equal(c1.length, docs.filter(d => d.conversation_id === "c1").length);
		assert.ok(c1.every((d: any) => d.n === -1 && d.outbox === undefined));
		assert.equal((await db.findAsync({ outbox: true })).length, 50 - c1.length);
		for (const d of c1) assert.equal((await db.findOneAsync({ seq_key: d.seq_key })).n, -1);
		// Every index holds the new documents only: the one under each key is the one stored.
		const byId = new Map((await db.getAllData()).map((d: any) => [d._id, d]));
		for (const field of ["conversation_id", "seq_key", "_id"]) {
			for (const d of db.indexes[field].getAll()) assert.equal(d, byId.get(d._id), `${field} holds a stale document`);
		}
		// A unique key taken: the whole update is refused, and nothing changed in any index.
		await assert.rejects(db.updateAsync({ conversation_id: "c2" }, { $set: { seq_key: "k0", n: 7 } }, { multi: true }));
		assert.ok((await db.findAsync({ conversation_id: "c2" })).every((d: any) => d.n !== 7));
		assert.equal((await db.findAsync({ n: 7 })).length, 0);
		for (const d of await db.findAsync({ conversation_id: "c2" })) assert.equal((await db.findOneAsync({ seq_key: d.seq_key }))._id, d._id);
		await adapter.disconnect();
		fs.rmSync(dir, { recursive: true, force: true });
	});
});
