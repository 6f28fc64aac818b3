/**
 * The embedded SQL store: PGlite (PostgreSQL compiled to WebAssembly) with its data in
 * DATA_DIR, served on a loopback port by pglite-socket so the same Sequelize postgres
 * dialect talks to it as to a real server. One process owns a data directory at a time.
 */
import fs from "node:fs";
import path from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";

interface Running {
	db: PGlite;
	server: PGLiteSocketServer;
	url: string;
	users: number;
}

const running = new Map<string, Promise<Running>>();

async function open(dir: string): Promise<Running> {
	fs.mkdirSync(dir, { recursive: true });
	const db = await PGlite.create({ dataDir: dir });
	// PGlite is one session: every connection would share it, so transactions from two
	// connections would interleave. One connection at a time; the pool on our side is size 1.
	const server = new PGLiteSocketServer({ db, host: "127.0.0.1", port: 0, maxConnections: 1 });
	await server.start();
	const [host, port] = server.getServerConn().split(":");
	return { db, server, url: `postgres://postgres@${host}:${port}/postgres`, users: 0 };
}

/** Start (or reuse) the embedded server for `dataDir`; returns a postgres:// URL. */
export async function acquireEmbeddedPostgres(dataDir: string): Promise<string> {
	const dir = path.join(dataDir, "pg");
	let entry = running.get(dir);
	if (!entry) {
		entry = open(dir);
		running.set(dir, entry);
		entry.catch(() => running.delete(dir));
	}
	const r = await entry;
	r.users++;
	return r.url;
}

export async function releaseEmbeddedPostgres(dataDir: string): Promise<void> {
	const dir = path.join(dataDir, "pg");
	const entry = running.get(dir);
	if (!entry) return;
	const r = await entry;
	if (--r.users > 0) return;
	running.delete(dir);
	await r.server.stop();
	await r.db.close();
}
