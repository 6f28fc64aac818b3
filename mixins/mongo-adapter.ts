/**
 * The MongoDB side of the docs mixin (MONGO_URL), loaded only when it is used.
 *
 * moleculer-db-adapter-mongoose keeps every service of a process on mongoose's one global
 * connection and model registry: the first service to stop closes the connection under the
 * others, and a second broker in the same process (tests, two nodes in one process) cannot
 * register its model again. The adapter below gives each database URL one shared, counted
 * connection of its own instead; the rest of the adapter is moleculer-db's.
 */
import MongooseDbAdapter from "moleculer-db-adapter-mongoose";
import mongoose from "mongoose";
import type { CollectionSpec } from "./docs.mixin";

// ---- one counted connection per URL in this process ----

const connections = new Map<string, { conn: Promise<mongoose.Connection>; users: number }>();

async function acquireConnection(url: string): Promise<mongoose.Connection> {
	let entry = connections.get(url);
	if (!entry) {
		const conn = mongoose
			.createConnection(url, { serverSelectionTimeoutMS: 10_000, maxPoolSize: 20 })
			.asPromise()
			.catch(err => {
				connections.delete(url);
				throw err;
			});
		entry = { conn, users: 0 };
		connections.set(url, entry);
	}
	entry.users++;
	return entry.conn;
}

async function releaseConnection(url: string): Promise<void> {
	const entry = connections.get(url);
	if (!entry || --entry.users > 0) return;
	connections.delete(url);
	await (await entry.conn).close();
}

class OwnConnectionMongooseAdapter extends (MongooseDbAdapter as unknown as new (uri: string) => any) {
	constructor(
		private readonly url: string,
		private readonly name: string,
		private readonly spec: CollectionSpec,
	) {
		super(url);
	}

	private connected = false;

	async connect(): Promise<void> {
		const conn = await acquireConnection(this.url);
		this.connected = true;
		this.conn = conn;
		this.db = conn.db;
		const name = this.name;
		let model = conn.models[name];
		if (!model) {
			const schema = new mongoose.Schema(this.spec.definition, { versionKey: false, minimize: false, collection: name });
			for (const idx of this.spec.indexes) schema.index(idx.fields, { unique: !!idx.unique, sparse: !!idx.sparse });
			model = conn.model(name, schema);
		}
		this.model = model;
		await model.init(); // builds the indexes
	}

	async disconnect(): Promise<void> {
		if (!this.connected) return;
		this.connected = false;
		await releaseConnection(this.url);
	}
}

export function createMongoAdapter(url: string, name: string, spec: CollectionSpec) {
	return new OwnConnectionMongooseAdapter(url, name, spec);
}

export function isValidObjectId(id: string): boolean {
	return mongoose.isValidObjectId(id);
}

export function newObjectId(): mongoose.Types.ObjectId {
	return new mongoose.Types.ObjectId();
}

/** moleculer-db-adapter-mongoose's init() wants a model or a schema in the service schema. */
export function emptySchema(): mongoose.Schema {
	return new mongoose.Schema({});
}
