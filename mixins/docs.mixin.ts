/**
 * The document store of a service: moleculer-db on MongoDB (MONGO_URL, mongoose) or, with no
 * MONGO_URL, on moleculer-db's MemoryAdapter (NeDB) persisted to a file under DATA_DIR.
 * The MongoDB adapter is in mixins/mongo-adapter.ts, loaded only with MONGO_URL.
 *
 * Queries stay within what both stores do: no $all, no compound unique index
 * (NeDB indexes one field; a unique compound is a synthetic `*_key` field), paging on fields.
 */
import crypto from "node:crypto";
import path from "node:path";
import type { Service, ServiceSchema, ServiceSettingSchema } from "moleculer";
import DbService from "moleculer-db";
import { NO_GENERIC_DB_ACTIONS } from "./db-actions";
import type mongoose from "mongoose";
import { config } from "../lib/config";
import { createEmbeddedAdapter } from "../lib/embedded-doc-store";
import { addReadinessProbe, removeReadinessProbe } from "../lib/readiness";

export interface IndexSpec {
	fields: Record<string, 1 | -1>;
	unique?: boolean;
	/** Only documents that have the field are indexed (a flag present while something is pending). */
	sparse?: boolean;
	/**
	 * false: not built in the embedded store. NeDB keeps one array per key value and an update
	 * removes its document by scanning that array, so an index on a value most documents share
	 * (null) makes every update of any of them cost as much as their number.
	 */
	nedb?: false;
}

export interface CollectionSpec {
	/** The mongoose schema definition; NeDB stores the same documents without one. */
	definition: mongoose.SchemaDefinition;
	indexes: IndexSpec[];
}

export interface DocsMixinOptions<C extends string> {
	/** Every collection the service owns, by name. The first is moleculer-db's own adapter. */
	collections: Record<C, CollectionSpec>;
}

export type Doc = Record<string, any> & { _id: string };

export interface FindOptions {
	sort?: string[];
	limit?: number;
	offset?: number;
}

/** The operations services use, the same on both stores; documents come back as plain objects with a string _id. */
export interface DocStore {
	find(query: Record<string, unknown>, options?: FindOptions): Promise<Doc[]>;
	findOne(query: Record<string, unknown>): Promise<Doc | null>;
	findById(id: string): Promise<Doc | null>;
	count(query: Record<string, unknown>): Promise<number>;
	/** How many documents match `query` for each of `values` of `field`: one round trip for all (0s included). */
	countEach(field: string, values: (string | number)[], query: Record<string, unknown>): Promise<Map<string | number, number>>;
	insert(doc: Record<string, unknown>): Promise<Doc>;
	/**
	 * Many documents in one round trip. A document that violates a unique index is skipped (a
	 * redelivered event), the others are stored; the stored ones come back, in order.
	 */
	insertMany(docs: Record<string, unknown>[]): Promise<Doc[]>;
	/** Atomic update of one document; the updated document, or null when there is none. */
	updateById(id: string, update: Record<string, unknown>): Promise<Doc | null>;
	updateMany(query: Record<string, unknown>, update: Record<string, unknown>): Promise<number>;
	removeMany(query: Record<string, unknown>): Promise<number>;
}

export interface DocsMixinThis<C extends string = string> extends Service {
	stores: Record<C, DocStore>;
	adapter: any;
	docAdapters: Record<C, any>;
}

/** Mongo (E11000) and NeDB (uniqueViolated) report a unique index violation differently. */
export function isDuplicateKeyError(err: unknown): boolean {
	const e = err as { code?: unknown; errorType?: unknown } | null;
	return !!e && (e.code === 11000 || e.code === 11001 || e.errorType === "uniqueViolated");
}

/** A string that is safe inside a RegExp, for literal search. */
export function escapeRegex(s: string): string {
	return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

// ---- MongoDB (mixins/mongo-adapter.ts), loaded only when MONGO_URL is set: mongoose and its
// adapter are ~40 MiB of the embedded node's memory, which never uses them ----

type MongoModule = typeof import("./mongo-adapter");
let mongoModule: MongoModule | null = null;
function mongo(): MongoModule {
	mongoModule ??= require("./mongo-adapter") as MongoModule;
	return mongoModule;
}

/** A new document id, in creation order within this process: an ObjectId on MongoDB, its 24 hex digits in NeDB. */
export function newOrderedId(): unknown {
	if (config.mongoUrl) return mongo().newObjectId();
	return orderedHexId();
}

const PROCESS_TAG = crypto.randomBytes(5).toString("hex");
let idCounter = crypto.randomInt(0xffffff);
/** ObjectId's layout (seconds, a per-process tag, a counter): ids made later sort after. */
function orderedHexId(): string {
	idCounter = (idCounter + 1) % 0x1000000;
	return Math.floor(Date.now() / 1000).toString(16).padStart(8, "0") + PROCESS_TAG + idCounter.toString(16).padStart(6, "0");
}

/**
 * A document for NeDB with its _id set here: NeDB's own ids cost a crypto.randomBytes call each
 * (a getrandom syscall; 7 % of the embedded node's CPU under chat load). Unique by construction
 * (per-process random tag and a counter), so NeDB's retry-on-collision never runs.
 */
function withNedbId<T extends object>(doc: T): T {
	return (doc as { _id?: unknown })._id === undefined ? { ...doc, _id: orderedHexId() } : doc;
}

function nedbAdapter(name: string, logger: Service["logger"]) {
	// MemoryAdapter (NeDB) whose file is written in batches, one write(2) per batch: lib/embedded-doc-store.ts.
	return createEmbeddedAdapter(path.join(config.dataDir, "docs", `${name}.db`), {
		onCompactionError: err => logger.warn(`Compaction of ${name}.db failed; the file stays as it is`, err.message),
	});
}

function toPlain(adapter: any, doc: unknown): Promise<Doc> {
	return Promise.resolve(adapter.entityToObject(doc)).then((plain: Doc) => {
		if (plain && typeof plain._id !== "string") plain._id = String(plain._id);
		return plain;
	});
}

async function prepareNedb(adapter: any, spec: CollectionSpec) {
	const wanted = new Set<string>(["_id"]);
	for (const idx of spec.indexes) {
		const fields = Object.keys(idx.fields);
		// NeDB indexes single fields; compound ones are served by scanning in the embedded store.
		if (fields.length !== 1 || idx.nedb === false) continue;
		wanted.add(fields[0]);
		await adapter.db.ensureIndexAsync({ fieldName: fields[0], unique: !!idx.unique, sparse: !!idx.sparse });
	}
	// NeDB keeps the indexes a data file was given: one this code no longer asks for goes.
	for (const field of Object.keys(adapter.db.indexes)) if (!wanted.has(field)) await adapter.db.removeIndexAsync(field);
	// The store compacts its file itself when it passes twice the size of the live documents.
}

// ---- store operations, counted per collection and kind (the cost of a request in round trips) ----

const opCounts = new Map<string, number>();

/** Store operations since the process started (or since resetStoreOps), by "collection.operation". */
export function storeOps(): Record<string, number> {
	return Object.fromEntries(opCounts);
}

export function resetStoreOps(): void {
	opCounts.clear();
}

function counted(name: string, store: DocStore): DocStore {
	const out = {} as DocStore;
	for (const op of Object.keys(store) as (keyof DocStore)[]) {
		const key = `${name}.${op}`;
		const fn = store[op] as (...args: unknown[]) => Promise<unknown>;
		(out as unknown as Record<string, unknown>)[op] = (...args: unknown[]) => {
			opCounts.set(key, (opCounts.get(key) ?? 0) + 1);
			return fn(...args);
		};
	}
	return out;
}

function storeOf(adapter: any): DocStore {
	const mongoDb = !!config.mongoUrl;
	return {
		find: async (query, opts = {}) => {
			const docs = await adapter.find({ query, sort: opts.sort, limit: opts.limit, offset: opts.offset });
			return Promise.all(docs.map((d: unknown) => toPlain(adapter, d)));
		},
		findOne: async query => {
			const doc = await adapter.findOne(query);
			return doc ? toPlain(adapter, doc) : null;
		},
		findById: async id => {
			if (mongoDb && !mongo().isValidObjectId(id)) return null;
			const doc = await adapter.findById(id);
			return doc ? toPlain(adapter, doc) : null;
		},
		count: query => adapter.count({ query }),
		countEach: async (field, values, query) => {
			const out = new Map<string | number, number>(values.map(v => [v, 0]));
			if (values.length === 0) return out;
			if (mongoDb) {
				const rows = (await adapter.model.aggregate([{ $match: { ...query, [field]: { $in: values } } }, { $group: { _id: `$${field}`, n: { $sum: 1 } } }])) as { _id: string | number; n: number }[];
				for (const row of rows) out.set(row._id, row.n);
			} else {
				// In memory: NeDB counts through its index without copying documents.
				await Promise.all(values.map(async v => out.set(v, await adapter.db.countAsync({ ...query, [field]: v }))));
			}
			return out;
		},
		insert: async doc => toPlain(adapter, await adapter.insert(mongoDb ? doc : withNedbId(doc))),
		insertMany: async docs => {
			if (docs.length === 0) return [];
			if (mongoDb) {
				// The driver's unordered insert: one round trip, and a duplicate stops only itself.
				const rows = docs.map(d => ({ ...d }));
				let failed = new Set<number>();
				try {
					await adapter.model.collection.insertMany(rows, { ordered: false });
				} catch (err) {
					const writeErrors = ((err as { writeErrors?: unknown }).writeErrors ?? []) as { index: number; code?: number; err?: { code?: number } }[];
					const list = Array.isArray(writeErrors) ? writeErrors : [writeErrors];
					if (list.length === 0 || !list.every(e => isDuplicateKeyError({ code: e.code ?? e.err?.code }))) throw err;
					failed = new Set(list.map(e => e.index));
				}
				return rows.filter((_, i) => !failed.has(i)).map(d => ({ ...d, _id: String(d._id) }) as Doc);
			}
			docs = docs.map(withNedbId);
			// NeDB inserts an array all or nothing: on a duplicate, one by one (only on redelivery).
			try {
				return await Promise.all(((await adapter.db.insertAsync(docs)) as unknown[]).map(d => toPlain(adapter, d)));
			} catch (err) {
				if (!isDuplicateKeyError(err)) throw err;
				const stored: Doc[] = [];
				for (const doc of docs) {
					try {
						stored.push(await toPlain(adapter, await adapter.insert(doc)));
					} catch (e) {
						if (!isDuplicateKeyError(e)) throw e;
					}
				}
				return stored;
			}
		},
		updateById: async (id, update) => {
			if (mongoDb && !mongo().isValidObjectId(id)) return null;
			const doc = await adapter.updateById(id, update);
			return doc ? toPlain(adapter, doc) : null;
		},
		updateMany: (query, update) => adapter.updateMany(query, update),
		removeMany: async query => {
			const res = await adapter.removeMany(query);
			return typeof res === "number" ? res : Number((res as { deletedCount?: number })?.deletedCount ?? 0);
		},
	};
}

export function createDocsMixin<C extends string>(options: DocsMixinOptions<C>): Partial<ServiceSchema> {
	const names = Object.keys(options.collections) as C[];
	for (const name of names) {
		for (const idx of options.collections[name].indexes) {
			if (idx.unique && Object.keys(idx.fields).length > 1) {
				throw new Error(`${name}: a unique index must be on one field (NeDB); use a synthetic key field`);
			}
		}
	}
	const mixin: Partial<ServiceSchema<ServiceSettingSchema, DocsMixinThis<C>>> = {
		mixins: [DbService],
		actions: { ...NO_GENERIC_DB_ACTIONS },
		created(this: DocsMixinThis<C>) {
			// moleculer-db made a MemoryAdapter from the (absent) schema adapter; choose ours now.
			const url = config.mongoUrl;
			this.docAdapters = {} as Record<C, any>;
			for (const name of names) {
				this.docAdapters[name] = url ? mongo().createMongoAdapter(url, name, options.collections[name]) : nedbAdapter(name, this.logger);
			}
			this.adapter = this.docAdapters[names[0]];
			if (url) {
				this.schema.schema ??= mongo().emptySchema();
				this.schema.modelName ??= names[0];
			}
			for (const name of names) this.docAdapters[name].init(this.broker, this);
		},
		methods: {
			async connect(this: DocsMixinThis<C>) {
				const stores = {} as Record<C, DocStore>;
				try {
					for (const name of names) {
						const adapter = this.docAdapters[name];
						await adapter.connect();
						if (!config.mongoUrl) await prepareNedb(adapter, options.collections[name]);
						stores[name] = counted(name, storeOf(adapter));
					}
				} catch (err) {
					await this.disconnect();
					throw err;
				}
				this.stores = stores;
				if (config.mongoUrl) {
					const db = (this.docAdapters[names[0]] as unknown as { db: { command(cmd: object): Promise<unknown> } }).db;
					addReadinessProbe(this.broker, "mongodb", () => db.command({ ping: 1 }));
				}
			},
			async disconnect(this: DocsMixinThis<C>) {
				if (config.mongoUrl) removeReadinessProbe(this.broker, "mongodb");
				for (const name of names) {
					const adapter = this.docAdapters[name];
					// NeDB's compaction timer would keep the process alive after the service stopped.
					adapter?.db?.stopAutocompaction?.();
					await Promise.resolve(adapter?.disconnect()).catch(() => undefined);
				}
			},
		},
	};
	return mixin as Partial<ServiceSchema>;
}
