/**
 * The embedded SQL store: PGlite (PostgreSQL compiled to WebAssembly) with its data in
 * DATA_DIR, served on a loopback port by pglite-socket so the same Sequelize postgres
 * dialect talks to it as to a real server. One process owns a data directory at a time.
 *
 * Memory (VmRSS at rest, PGlite 0.5.14, Node 20; Node 22 alike). PGlite with its defaults:
 * ~820 MiB on a new data directory, ~310 MiB reopening one (the embedded node ~880 / ~430).
 * - initdb ran in this process (a second PGlite instance, initdb.wasm, a tar copy of the
 *   cluster): ~500 MiB left resident until a full GC that may not come for a long time. A new
 *   cluster is now made by a short-lived child process (INITDB_SCRIPT, peak ~780 MiB there,
 *   all returned when it exits); this process only ever opens an existing cluster.
 * - shared_buffers=128MB (initdb's default) is all touched in the WASM heap at start: ~150 MiB.
 *   4MB: no measurable change on a 50,000-user table (index lookups, updates, a prefix seq
 *   scan); pages past the pool come back from the OS page cache (the files are plain files).
 * Now ~165 MiB for a bare PGlite process (a bare Node is ~42), the embedded node ~270-300 MiB
 * at rest, new or existing DATA_DIR, ~365 MiB after 10,000 chat messages. `-c` outranks
 * postgresql.conf, so data directories made before (shared_buffers = 128MB there) open as they are.
 */
import { execFile } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { PGlite, type PGliteOptions } from "@electric-sql/pglite";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";

const PGLITE_OPTIONS: PGliteOptions = {
	// PGlite's defaults kept (they include -F, fsync off, as PGlite always ran: a commit is
	// written to the files before it returns, so it survives the process dying, not an OS crash).
	startParams: [...PGlite.defaultStartParams, "-c", "shared_buffers=4MB"],
};

// Run by plain node (CommonJS): argv[1] PGlite's entry point, argv[2] the directory, argv[3] the options.
const INITDB_SCRIPT = `
const { PGlite } = require(process.argv[1]);
PGlite.create({ ...JSON.parse(process.argv[3]), dataDir: process.argv[2] })
	.then(db => db.close())
	.then(() => process.exit(0), err => { console.error(err); process.exit(1); });
`;

interface Running {
	db: PGlite;
	server: PGLiteSocketServer;
	url: string;
	users: number;
}

const running = new Map<string, Promise<Running>>();

function isCluster(dir: string): boolean {
	return fs.existsSync(path.join(dir, "PG_VERSION"));
}

function runInitdb(dir: string): Promise<void> {
	const args = ["-e", INITDB_SCRIPT, require.resolve("@electric-sql/pglite"), dir, JSON.stringify(PGLITE_OPTIONS)];
	return new Promise((resolve, reject) => {
		execFile(process.execPath, args, { maxBuffer: 16 * 1024 * 1024 }, (err, _stdout, stderr) => {
			if (err) reject(new Error(`PGlite initdb in ${dir} failed: ${stderr.trim() || err.message}`));
			else resolve();
		});
	});
}

/** Makes a cluster in `dir` (absent or empty) in a child process, in a side directory moved into place when complete. */
async function initCluster(dir: string): Promise<void> {
	// Left by a process killed during initdb (we own `dir`, so no one else is using them).
	const prefix = `${path.basename(dir)}.init-`;
	for (const name of fs.readdirSync(path.dirname(dir))) {
		if (name.startsWith(prefix)) fs.rmSync(path.join(path.dirname(dir), name), { recursive: true, force: true });
	}
	const tmp = `${dir}.init-${process.pid}`;
	try {
		await runInitdb(tmp);
		if (!isCluster(tmp)) throw new Error(`PGlite initdb in ${tmp} made no PG_VERSION`);
		if (fs.existsSync(dir)) fs.rmdirSync(dir); // empty (checked by the caller); a non-empty one throws
		fs.renameSync(tmp, dir);
	} finally {
		fs.rmSync(tmp, { recursive: true, force: true });
	}
}

async function open(dir: string): Promise<Running> {
	fs.mkdirSync(path.dirname(dir), { recursive: true });
	// A directory with files but no PG_VERSION is left to PGlite, as before (it runs initdb over it).
	if (!isCluster(dir) && (!fs.existsSync(dir) || fs.readdirSync(dir).length === 0)) await initCluster(dir);
	fs.mkdirSync(dir, { recursive: true });
	const db = await PGlite.create({ ...PGLITE_OPTIONS, dataDir: dir });
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
