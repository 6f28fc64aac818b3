/**
 * The embedded document store: moleculer-db's MemoryAdapter on NeDB, with NeDB's persistence
 * replaced by a group-committed append log.
 *
 * Stock NeDB appends each change with its own fs.appendFile (open, write, close) inside its one
 * operation queue, so every write waits for the disk before the next operation (reads too) may
 * start. Here:
 *
 * - Writing: a change is queued in memory and the operation queue moves on at once. Changes queued
 *   in the same turn of the event loop go to the file in ONE write(2) on a file kept open (the
 *   "batch"; a small one written synchronously, see SYNC_WRITE_MAX_BYTES); while a big one is in
 *   flight the next batch gathers. Changes to one document within a
 *   batch are coalesced to its last state (the loader keeps the last line of an _id anyway).
 * - Acknowledging: insert/update/remove resolve only when the batch holding their lines has been
 *   written to the OS (write(2) returned; no fsync, as stock NeDB). A process killed right after
 *   an acknowledgement loses nothing. Reads resolve once the changes they could see are written
 *   too (as with stock NeDB, nothing a client saw is taken back by a crash); they wait only while
 *   a batch is in flight. A failed write rejects the operations waiting for it; its
 *   lines stay queued and go first in the next write, so the file never misses a change that a
 *   later acknowledgement covers.
 * - Compacting: NeDB adds a line per change. When the file holds more than `compactRatio` times
 *   the bytes of the live documents (and more than `compactMinBytes`), a snapshot of the documents
 *   is written to `<file>~` in steps between which requests are served, the batches written
 *   meanwhile are appended to it, and it replaces the file (rename). Writes wait only for that
 *   last catch-up and the rename. Crash-safe like NeDB's own: `<file>` is always whole, and NeDB's
 *   loader takes `<file>~` only when `<file>` is missing.
 * - Format: the file is NeDB's own (one JSON line per document state, `$$deleted`, `$$date`,
 *   `$$indexCreated`), loaded by NeDB's loader, so data directories move both ways.
 */
import fs from "node:fs";
import path from "node:path";
import DbService from "moleculer-db";

const NeDB: new (options: Record<string, unknown>) => any = require("@seald-io/nedb");
const NeDBIndex: { prototype: { updateMultipleDocs(pairs: { oldDoc: object; newDoc: object }[]): void } } = require("@seald-io/nedb/lib/indexes.js");
const nedbModel: { getDotValue(doc: object, field: string): unknown; compareThings(a: unknown, b: unknown): number } = require("@seald-io/nedb/lib/model.js");

/**
 * NeDB updates every index of an updated document by removing it (a filter over every document
 * sharing its key) and inserting it again, even when the indexed field did not change: an update
 * of one message cost a scan of its whole conversation (the conversation_id index). Where the key
 * is the same scalar, the new document now takes the old one's place in the key's list instead:
 * the same index afterwards (the old document is gone, the new one is under the same key), found
 * with indexOf. Array keys and changed keys go NeDB's way.
 */
const nedbUpdateMultipleDocs = NeDBIndex.prototype.updateMultipleDocs;
NeDBIndex.prototype.updateMultipleDocs = function (this: { fieldName: string; sparse: boolean; tree: { search(key: unknown): object[] } }, pairs) {
	const rest: typeof pairs = [];
	const replaced: { docs: object[]; at: number; oldDoc: object }[] = [];
	for (const pair of pairs) {
		const before = nedbModel.getDotValue(pair.oldDoc, this.fieldName);
		const after = nedbModel.getDotValue(pair.newDoc, this.fieldName);
		if (Array.isArray(before) || Array.isArray(after) || nedbModel.compareThings(before, after) !== 0) {
			rest.push(pair);
			continue;
		}
		if (before === undefined && this.sparse) continue; // in neither: not indexed
		const docs = this.tree.search(before);
		const at = docs.indexOf(pair.oldDoc);
		if (at === -1) rest.push(pair);
		else {
			docs[at] = pair.newDoc;
			replaced.push({ docs, at, oldDoc: pair.oldDoc });
		}
	}
	if (rest.length === 0) return;
	try {
		nedbUpdateMultipleDocs.call(this, rest);
	} catch (err) {
		// NeDB rolled its part of this index back (a unique key taken); ours goes back too.
		for (const r of replaced) r.docs[r.at] = r.oldDoc;
		throw err;
	}
};

export interface EmbeddedStoreOptions {
	/** Compact when the file is more than this many times the bytes of the live documents. */
	compactRatio?: number;
	/** ... and larger than this. */
	compactMinBytes?: number;
	/** Documents serialized per step of a compaction; requests are served between steps. */
	compactChunkDocs?: number;
	/** A background compaction failed (the old file stays in use; tried again after it grew). */
	onCompactionError?: (err: Error) => void;
}

export interface EmbeddedStoreStats {
	/** Bytes in the data file. */
	fileBytes: number;
	/** Bytes the live documents take (what a compaction would write). */
	liveBytes: number;
	liveDocs: number;
	/** write(2) calls for batches, and lines they carried. */
	writes: number;
	lines: number;
	compactions: number;
	compacting: boolean;
}

// 500 documents a step: ~10 ms of serializing at a time, so a compaction does not stall requests.
const DEFAULTS = { compactRatio: 2, compactMinBytes: 4 * 1024 * 1024, compactChunkDocs: 500 };
const FILE_MODE = 0o644;
const RESOLVED = Promise.resolve();

/**
 * NeDB's line for a document (its model.serialize), without its per-key replacer: a Date (an
 * object with getTime) becomes {"$$date": ms}, the rest is JSON.stringify's. The field names were
 * checked when the document entered the store (checkObject on insert and modify).
 */
export function serializeDoc(doc: object): string {
	return JSON.stringify(storable(doc));
}

function storable(v: any): any {
	if (v === null || typeof v !== "object") return v;
	if (typeof v.getTime === "function") return { $$date: v.getTime() };
	if (Array.isArray(v)) {
		let out: any[] | null = null;
		for (let i = 0; i < v.length; i++) {
			const s = storable(v[i]);
			if (s !== v[i]) (out ??= v.slice())[i] = s;
		}
		return out ?? v;
	}
	let out: Record<string, any> | null = null;
	for (const k of Object.keys(v)) {
		const x = v[k];
		const s = storable(x);
		if (s !== x) (out ??= { ...v })[k] = s;
	}
	return out ?? v;
}

// ---- small promise wrappers over the callback fs API (no FileHandle objects) ----

function writeAll(fd: number, buf: Buffer): Promise<void> {
	return new Promise((resolve, reject) => {
		let off = 0;
		const step = () =>
			fs.write(fd, buf, off, buf.length - off, null, (err, n) => {
				if (err) return reject(err);
				off += n;
				if (off < buf.length) step();
				else resolve();
			});
		if (buf.length === 0) resolve();
		else step();
	});
}

/**
 * Up to this size a batch is written with write(2) on the main thread: appending a few KiB to the
 * page cache costs ~3 µs there, while the same write through libuv's thread pool cost 50-140 µs
 * of CPU (the hand-off and wake-up of a pool thread), measured on the reference 2-core VM.
 * A larger batch (after a stall, or a big import) goes through the pool, off the event loop.
 */
const SYNC_WRITE_MAX_BYTES = 256 * 1024;

function writeBatch(fd: number, buf: Buffer): Promise<void> {
	if (buf.length > SYNC_WRITE_MAX_BYTES) return writeAll(fd, buf);
	let off = 0;
	while (off < buf.length) off += fs.writeSync(fd, buf, off, buf.length - off, null);
	return Promise.resolve();
}

const fsp = fs.promises;

function openFd(file: string, flags: string): Promise<number> {
	return new Promise((resolve, reject) => fs.open(file, flags, FILE_MODE, (err, fd) => (err ? reject(err) : resolve(fd))));
}

function closeFd(fd: number): Promise<void> {
	return new Promise(resolve => fs.close(fd, () => resolve()));
}

function fsyncFd(fd: number): Promise<void> {
	return new Promise((resolve, reject) => fs.fsync(fd, err => (err ? reject(err) : resolve())));
}

/** Best effort, as NeDB: some systems cannot fsync a directory. */
async function fsyncDir(dir: string): Promise<void> {
	try {
		const fd = await openFd(dir, "r");
		await new Promise<void>(resolve => fs.fsync(fd, () => resolve()));
		await closeFd(fd);
	} catch {
		// ignore
	}
}

const nextTurn = () => new Promise<void>(resolve => setImmediate(resolve));

interface Waiter {
	seq: number;
	resolve: () => void;
	reject: (err: Error) => void;
}

/** The data file of one datastore: batches, acknowledgements, compaction. */
class DocLog {
	private readonly opts: Required<Omit<EmbeddedStoreOptions, "onCompactionError">> & Pick<EmbeddedStoreOptions, "onCompactionError">;
	private fd: number | null = null;
	private fileBytes = 0;
	/** _id -> bytes of its last line, for the compaction bound. */
	private readonly live = new Map<string, number>();
	private liveBytes = 0;

	/** Changes not yet handed to a write: documents by _id (coalesced), and index lines. */
	private pendingDocs = new Map<string, object>();
	private pendingMeta: object[] = [];
	/** A batch whose write failed: written first by the next one. */
	private carry: Buffer | null = null;
	/** Sequence of the last queued change, and of the last one written. */
	private queuedSeq = 0;
	private writtenSeq = 0;
	private waiters: Waiter[] = [];

	private writing = false;
	private scheduled = false;
	private idle: (() => void)[] = [];
	/** Set while a compaction swaps the file: no batch starts. */
	private switching = false;
	/**
	 * During a compaction: the newest state of each document changed since its snapshot (and the
	 * index lines), appended to the new file before the swap. Bounded by the documents, not by
	 * the number of changes.
	 */
	private dirty: Map<string, object> | null = null;
	private dirtyMeta: object[] = [];
	private compaction: Promise<void> | null = null;
	private noAutoCompactionBelow = 0;
	private closing = false;
	private closed = false;

	private writes = 0;
	private lines = 0;
	private compactions = 0;

	constructor(
		private readonly db: any,
		private readonly filename: string,
		options: EmbeddedStoreOptions,
	) {
		this.opts = { ...DEFAULTS, ...options };
	}

	get lastQueued(): number {
		return this.queuedSeq;
	}

	stats(): EmbeddedStoreStats {
		return {
			fileBytes: this.fileBytes,
			liveBytes: this.liveBytes,
			liveDocs: this.live.size,
			writes: this.writes,
			lines: this.lines,
			compactions: this.compactions,
			compacting: !!this.compaction,
		};
	}

	/** NeDB's persistNewStateAsync: queue the new states; written by the next batch. */
	append(docs: any[]): void {
		if (docs.length === 0) return;
		if (this.closed) throw new Error(`Embedded store ${this.filename} is closed`);
		for (const doc of docs) {
			if (doc._id !== undefined) {
				this.pendingDocs.delete(doc._id); // re-added at the end: keeps batches in change order
				this.pendingDocs.set(doc._id, doc);
				this.dirty?.set(doc._id, doc);
			} else {
				this.pendingMeta.push(doc);
				if (this.dirty) this.dirtyMeta.push(doc);
			}
		}
		this.queuedSeq++;
		this.schedule();
	}

	/** Resolves when every change queued up to `seq` is written; rejects if its write failed. */
	waitFor(seq: number): Promise<void> {
		if (seq <= this.writtenSeq) return RESOLVED;
		return new Promise<void>((resolve, reject) => {
			this.waiters.push({ seq, resolve, reject });
			this.schedule();
		});
	}

	/** Everything queued so far, written. */
	sync(): Promise<void> {
		return this.waitFor(this.queuedSeq);
	}

	private hasWork(): boolean {
		return this.pendingDocs.size > 0 || this.pendingMeta.length > 0 || this.carry !== null;
	}

	private schedule(): void {
		if (this.scheduled || this.writing || this.switching) return;
		// A failed batch is tried again with new changes, or for someone waiting: no retry loop.
		if (this.pendingDocs.size === 0 && this.pendingMeta.length === 0 && !(this.carry && this.waiters.length > 0)) return;
		this.scheduled = true;
		setImmediate(() => {
			this.scheduled = false;
			void this.flush();
		});
	}

	/** Serialize the pending changes into one buffer; updates the live-bytes account. */
	private takeBatch(): { buf: Buffer; count: number } {
		let text = "";
		let count = 0;
		for (const doc of this.pendingDocs.values()) {
			const line = serializeDoc(doc) + "\n";
			text += line;
			count++;
			const id = (doc as { _id: string })._id;
			const prev = this.live.get(id) ?? 0;
			if ((doc as { $$deleted?: boolean }).$$deleted === true) {
				this.live.delete(id);
				this.liveBytes -= prev;
			} else {
				const len = Buffer.byteLength(line);
				this.live.set(id, len);
				this.liveBytes += len - prev;
			}
		}
		for (const meta of this.pendingMeta) {
			text += serializeDoc(meta) + "\n";
			count++;
		}
		this.pendingDocs = new Map();
		this.pendingMeta = [];
		const fresh = Buffer.from(text, "utf8");
		const buf = this.carry ? Buffer.concat([this.carry, fresh]) : fresh;
		this.carry = null;
		return { buf, count };
	}

	private async flush(): Promise<void> {
		if (this.writing || this.switching || !this.hasWork()) return;
		this.writing = true;
		const upTo = this.queuedSeq;
		let batch: { buf: Buffer; count: number } | null = null;
		try {
			batch = this.takeBatch();
			if (this.fd === null) await this.openFile();
			const before = this.fileBytes;
			try {
				await writeBatch(this.fd as number, batch.buf);
			} catch (err) {
				// Cut off whatever part was written; if that fails, the newline the retry starts with
				// ends the partial line (NeDB's loader skips an unreadable line).
				await new Promise<void>(resolve => fs.ftruncate(this.fd as number, before, () => resolve()));
				throw err;
			}
			this.fileBytes += batch.buf.length;
			this.writes++;
			this.lines += batch.count;
			this.writtenSeq = upTo;
			this.settle(upTo, null);
		} catch (err) {
			if (batch) this.carry = Buffer.concat([Buffer.from("\n"), batch.buf]);
			this.settle(upTo, err as Error);
		} finally {
			this.writing = false;
			for (const wake of this.idle.splice(0)) wake();
		}
		this.maybeCompact();
		this.schedule();
	}

	private settle(upTo: number, err: Error | null): void {
		if (this.waiters.length === 0) return;
		const done: Waiter[] = [];
		const rest: Waiter[] = [];
		for (const w of this.waiters) (w.seq <= upTo ? done : rest).push(w);
		this.waiters = rest;
		for (const w of done) {
			if (err) w.reject(err);
			else w.resolve();
		}
	}

	private whenIdle(): Promise<void> {
		return this.writing ? new Promise(resolve => this.idle.push(resolve)) : RESOLVED;
	}

	private async openFile(): Promise<void> {
		const fd = await openFd(this.filename, "a");
		try {
			this.fileBytes = (await fsp.stat(this.filename)).size;
		} catch (err) {
			await closeFd(fd);
			throw err;
		}
		this.fd = fd;
	}

	private async closeFile(): Promise<void> {
		const fd = this.fd;
		this.fd = null;
		if (fd !== null) await closeFd(fd);
	}

	private indexLines(): object[] {
		const out: object[] = [];
		for (const [fieldName, index] of Object.entries<any>(this.db.indexes)) {
			if (fieldName !== "_id") out.push({ $$indexCreated: { fieldName, unique: index.unique, sparse: index.sparse } });
		}
		return out;
	}

	/**
	 * Write every live document and the indexes to `<file>~` and fsync it; `between` runs after
	 * each step (a compaction yields there). The documents are those in memory when it is called.
	 * At load it also sets the live-bytes account; later the batches keep it.
	 */
	private async writeSnapshot(tmp: string, between: () => Promise<void>, account: boolean): Promise<{ fd: number; bytes: number }> {
		const docs: { _id: string }[] = this.db.getAllData();
		const meta = this.indexLines();
		const fd = await openFd(tmp, "w");
		let bytes = 0;
		try {
			const step = this.opts.compactChunkDocs;
			for (let i = 0; i < docs.length; i += step) {
				let text = "";
				for (let j = i; j < Math.min(i + step, docs.length); j++) {
					const line = serializeDoc(docs[j]) + "\n";
					text += line;
					if (account) {
						const len = Buffer.byteLength(line);
						this.live.set(docs[j]._id, len);
						this.liveBytes += len;
					}
				}
				const buf = Buffer.from(text, "utf8");
				await writeAll(fd, buf);
				bytes += buf.length;
				await between();
			}
			const metaBuf = Buffer.from(meta.map(m => serializeDoc(m) + "\n").join(""), "utf8");
			await writeAll(fd, metaBuf);
			bytes += metaBuf.length;
			await fsyncFd(fd);
			return { fd, bytes };
		} catch (err) {
			await closeFd(fd);
			await fsp.unlink(tmp).catch(() => undefined);
			throw err;
		}
	}

	/**
	 * NeDB's persistCachedDatabaseAsync, which its loader runs (in its queue, before any other
	 * operation): write the loaded documents as a fresh file, then keep it open for appending.
	 */
	async rewriteAtLoad(): Promise<void> {
		await this.closeFile();
		this.live.clear();
		this.liveBytes = 0;
		const tmp = this.filename + "~";
		const { fd, bytes } = await this.writeSnapshot(tmp, () => RESOLVED, true);
		await closeFd(fd);
		await fsp.rename(tmp, this.filename);
		await fsyncDir(path.dirname(this.filename));
		await this.openFile();
		this.fileBytes = bytes;
		this.db.emit("compaction.done");
	}

	/** Before NeDB's loader reads the file: write what is queued, close it. */
	async beforeLoad(): Promise<void> {
		await this.compaction;
		if (this.fd !== null) await this.sync().catch(() => undefined);
		await this.closeFile();
	}

	private maybeCompact(): void {
		if (this.compaction || this.closing || this.fd === null) return;
		if (this.fileBytes <= this.opts.compactMinBytes || this.fileBytes <= this.noAutoCompactionBelow) return;
		if (this.fileBytes <= this.opts.compactRatio * this.liveBytes) return;
		void this.compact();
	}

	/** Compact now (in the background of writes); resolves when done. Never rejects. */
	compact(): Promise<void> {
		if (this.compaction) return this.compaction;
		if (this.closing || this.fd === null) return RESOLVED;
		this.compaction = this.runCompaction()
			.then(
				() => {
					this.compactions++;
					this.noAutoCompactionBelow = 0;
					this.db.emit("compaction.done");
				},
				(err: Error) => {
					this.noAutoCompactionBelow = this.fileBytes + this.opts.compactMinBytes;
					if (!this.closing) this.opts.onCompactionError?.(err);
				},
			)
			.finally(() => {
				this.dirty = null;
				this.dirtyMeta = [];
				this.compaction = null;
				// Writes made while it finished may have passed the bound again.
				this.maybeCompact();
			});
		return this.compaction;
	}

	/** The lines of the documents changed since the snapshot, as they are now; starts a new set. */
	private takeDirty(): Buffer {
		const dirty = this.dirty as Map<string, object>;
		let text = "";
		for (const doc of dirty.values()) text += serializeDoc(doc) + "\n";
		for (const meta of this.dirtyMeta) text += serializeDoc(meta) + "\n";
		this.dirty = new Map();
		this.dirtyMeta = [];
		return Buffer.from(text, "utf8");
	}

	private async runCompaction(): Promise<void> {
		const tmp = this.filename + "~";
		// The snapshot is the documents in memory now (writeSnapshot takes them synchronously):
		// every change in it was queued by now, and every change queued from now on is in `dirty`.
		this.dirty = new Map();
		this.dirtyMeta = [];
		const { fd, bytes: snapshotBytes } = await this.writeSnapshot(
			tmp,
			async () => {
				await nextTurn();
				if (this.closing) throw new Error("closing");
			},
			false,
		);
		let bytes = snapshotBytes;
		let swapped = false;
		try {
			// Catch up with the changes made meanwhile while writes go on ...
			for (let round = 0; round < 5 && (this.dirty as Map<string, object>).size > 256; round++) {
				const buf = this.takeDirty();
				await writeAll(fd, buf);
				bytes += buf.length;
			}
			// ... then hold the batches for the last of them and the swap: every batch written to
			// the old file so far holds changes whose documents are now in the new one.
			this.switching = true;
			await this.whenIdle();
			if (this.closing) throw new Error("closing");
			const buf = this.takeDirty();
			this.dirty = null;
			await writeAll(fd, buf);
			bytes += buf.length;
			await fsp.rename(tmp, this.filename);
			swapped = true;
			const old = this.fd;
			this.fd = null;
			if (old !== null) await closeFd(old);
			this.fileBytes = bytes;
			// If this fails, the next batch opens the file again.
			await this.openFile().catch(() => undefined);
		} finally {
			await closeFd(fd);
			if (!swapped) await fsp.unlink(tmp).catch(() => undefined);
			this.switching = false;
			this.schedule();
		}
		await fsyncDir(path.dirname(this.filename));
	}

	/**
	 * Stop: a running compaction is abandoned, everything queued is written, the file closed.
	 * Rejects (after closing) if the last changes could not be written.
	 */
	async close(): Promise<void> {
		if (this.closed) return;
		this.closing = true;
		await this.compaction;
		let failure: unknown = null;
		await this.sync().catch(err => (failure = err));
		this.closed = true;
		await this.whenIdle();
		await this.closeFile();
		for (const w of this.waiters.splice(0)) w.reject(new Error(`Embedded store ${this.filename} is closed`));
		if (failure) throw failure;
	}
}

/**
 * NeDB's Datastore on a DocLog; the same API, and a close. Every operation goes through NeDB's
 * queue as before, and resolves once every change queued by the time it ran is written: a write
 * is acknowledged only when on the OS, and a read never shows what a crash could take back
 * (a read waits only while writes are in flight, and no longer than their write).
 */
class BatchedDatastore extends NeDB {
	readonly log: DocLog;

	constructor(filename: string, options: EmbeddedStoreOptions) {
		super({ filename });
		const log = new DocLog(this, filename, options);
		this.log = log;
		const persistence = this.persistence;
		const load = persistence.loadDatabaseAsync.bind(persistence);
		persistence.persistNewStateAsync = async (docs: any[]) => log.append(docs);
		persistence.persistCachedDatabaseAsync = () => log.rewriteAtLoad();
		persistence.loadDatabaseAsync = async () => {
			await log.beforeLoad();
			return load();
		};
		const drop = persistence.dropDatabaseAsync.bind(persistence);
		persistence.dropDatabaseAsync = async () => {
			await log.close();
			return drop();
		};
		// The queue no longer waits for the disk; the caller does, outside it.
		const push = this.executor.pushAsync.bind(this.executor);
		this.executor.pushAsync = (task: () => Promise<unknown>, forceQueuing?: boolean) =>
			push(async () => {
				const result = await task();
				return { result, seq: log.lastQueued };
			}, forceQueuing).then(({ result, seq }: { result: unknown; seq: number }) => log.waitFor(seq).then(() => result));
	}

	/** In the background of writes, not in NeDB's queue (its autocompaction timer lands here too). */
	compactDatafileAsync() {
		return this.log.compact();
	}

	/** After the operations already queued: their changes are written, then the file is closed. */
	async closeAsync() {
		this.stopAutocompaction();
		if (this.executor.ready) await this.executor.pushAsync(async () => undefined).catch(() => undefined);
		await this.log.close();
	}
}

const MemoryAdapter = DbService.MemoryAdapter as unknown as new (opts?: object) => any;

/** moleculer-db's MemoryAdapter on a BatchedDatastore: the same adapter API, a file written in batches. */
export class EmbeddedAdapter extends MemoryAdapter {
	constructor(
		readonly filename: string,
		readonly storeOptions: EmbeddedStoreOptions = {},
	) {
		super({ filename });
	}

	/** A new datastore per connect, as MemoryAdapter makes one from its options. */
	connect(): Promise<void> {
		this.opts = new BatchedDatastore(this.filename, this.storeOptions);
		return super.connect();
	}

	/** Writes what is queued and closes the file. */
	async disconnect(): Promise<void> {
		const db = this.db as BatchedDatastore | null;
		try {
			if (db) await db.closeAsync();
		} finally {
			await super.disconnect();
		}
	}

	/** Everything written so far is on the OS. */
	sync(): Promise<void> {
		return (this.db as BatchedDatastore | null)?.log.sync() ?? RESOLVED;
	}

	/** Compact now, in the background of writes (it also happens by itself past the bound). */
	compact(): Promise<void> {
		return (this.db as BatchedDatastore | null)?.log.compact() ?? RESOLVED;
	}

	stats(): EmbeddedStoreStats | null {
		return (this.db as BatchedDatastore | null)?.log.stats() ?? null;
	}
}

export function createEmbeddedAdapter(filename: string, options: EmbeddedStoreOptions = {}): EmbeddedAdapter {
	fs.mkdirSync(path.dirname(filename), { recursive: true });
	return new EmbeddedAdapter(filename, options);
}
