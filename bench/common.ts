/**
 * What the benches (bench/http.ts, bench/chat.ts, bench/chat-*.ts) share: server child processes
 * (start, health, stop), the cleanup registry with its signal handling and exit code, temp dirs,
 * ports, the AMQP and MongoDB URLs, the bench PostgreSQL database, process figures read from
 * /proc (CPU time, RSS, finding RabbitMQ / PostgreSQL / FerretDB by name), latency percentiles
 * and table output.
 *
 * Every child, temp dir and database is registered here as soon as it exists; `cleanup()` stops,
 * removes and drops them all, on success, on failure and on Ctrl-C alike.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { removeNamespaceTopology } from "../lib/durable-events";
import { Client } from "pg";
import { NODE_FLAGS } from "../lib/node-flags";

// ---- settings ----

const ROOT = path.resolve(__dirname, "..");
const HEALTH_TIMEOUT_MS = 60_000;
const KILL_GRACE_MS = 10_000;
const DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672";
const JWT_SECRET = crypto.randomBytes(32).toString("base64url"); // 43 characters

/** A positive number from the environment (a whole one if `integer`), else `fallback`. */
export function positiveNumberEnv(name: string, fallback: number, integer: boolean): number {
	const raw = process.env[name];
	if (raw == null || raw.trim() === "") return fallback;
	const value = Number(raw);
	if (!Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
		throw new Error(`${name} must be ${integer ? "a whole number >= 1" : "a number > 0"}, got "${raw}"`);
	}
	return value;
}

// ---- cleanup ----

export interface ServerNode {
	name: string;
	child: ChildProcess;
	logFile: string;
	exited: Promise<void>;
	exitInfo: string | null;
}

const nodes: ServerNode[] = [];
const tempDirs: string[] = [];
const databasesToDrop: (() => Promise<void>)[] = [];
let cleanupPromise: Promise<void> | null = null;
let beforeStop: () => void = () => undefined;
let databaseLabel = "a bench database";
let interrupted = false;

/**
 * `beforeStop` runs first in `cleanup()` (stop the load generator, close the sockets);
 * `databaseLabel` names a database in the message when dropping it fails.
 */
export function configureCleanup(options: { beforeStop: () => void; databaseLabel: string }): void {
	beforeStop = options.beforeStop;
	databaseLabel = options.databaseLabel;
}

/** Registers `drop` to run in `cleanup()`, after the nodes have stopped. */
export function dropAtCleanup(drop: () => Promise<void>): void {
	databasesToDrop.push(drop);
}

/** True once SIGINT or SIGTERM has started the cleanup. */
export function isInterrupted(): boolean {
	return interrupted;
}

export async function stopNode(node: ServerNode): Promise<void> {
	if (node.exitInfo !== null) return;
	node.child.kill("SIGTERM");
	let timer: NodeJS.Timeout | undefined;
	const killed = new Promise<"timeout">(resolve => {
		timer = setTimeout(() => resolve("timeout"), KILL_GRACE_MS);
	});
	const outcome = await Promise.race([node.exited.then(() => "exited" as const), killed]);
	clearTimeout(timer);
	if (outcome === "timeout" && node.exitInfo === null) {
		console.error(`${node.name}: still running ${KILL_GRACE_MS / 1000}s after SIGTERM, sending SIGKILL`);
		node.child.kill("SIGKILL");
		await node.exited;
	}
}

export function cleanup(): Promise<void> {
	cleanupPromise ??= (async () => {
		beforeStop();
		await Promise.all(nodes.map(n => stopNode(n).catch((err: unknown) => console.error(`stopping ${n.name}:`, err))));
		for (const drop of databasesToDrop) {
			await drop().catch((err: unknown) => console.error(`dropping ${databaseLabel}:`, err));
		}
		for (const dir of tempDirs) {
			// BENCH_KEEP=1: the nodes' logs and data stay for a look afterwards.
			if (process.env.BENCH_KEEP === "1") {
				console.error(`kept ${dir} (BENCH_KEEP=1)`);
				continue;
			}
			try {
				fs.rmSync(dir, { recursive: true, force: true });
			} catch (err) {
				console.error(`removing ${dir}:`, err);
			}
		}
	})();
	return cleanupPromise;
}

/** On SIGINT or SIGTERM: clean up, then exit 1. */
export function handleSignals(): void {
	for (const signal of ["SIGINT", "SIGTERM"] as const) {
		process.on(signal, () => {
			if (interrupted) return;
			interrupted = true;
			console.error(`\n${signal}: stopping the servers and cleaning up...`);
			void cleanup().finally(() => process.exit(1));
		});
	}
}

/** Runs `main`, cleans up, exits 0 on success and 1 on failure (a signal exits on its own). */
export function runMain(main: () => Promise<void>): void {
	main()
		.then(
			() => 0,
			(err: unknown) => {
				console.error(`\nbench failed: ${err instanceof Error ? err.message : String(err)}`);
				return 1;
			},
		)
		.then(async code => {
			await cleanup();
			if (!interrupted) process.exit(code);
		});
}

// ---- helpers ----

/** A new directory `parley-bench-<label>-*` in the system temp dir, removed by `cleanup()`. */
export function makeTempDir(label: string): string {
	const dir = fs.mkdtempSync(path.join(os.tmpdir(), `parley-bench-${label}-`));
	tempDirs.push(dir);
	return dir;
}

export function freePort(): Promise<number> {
	return new Promise((resolve, reject) => {
		const server = net.createServer();
		server.unref();
		server.on("error", reject);
		server.listen(0, "127.0.0.1", () => {
			const { port } = server.address() as net.AddressInfo;
			server.close(() => resolve(port));
		});
	});
}

export function tcpReachable(host: string, port: number, timeoutMs = 2_000): Promise<string | null> {
	return new Promise(resolve => {
		const socket = net.connect({ host, port });
		const done = (reason: string | null) => {
			socket.destroy();
			resolve(reason);
		};
		socket.setTimeout(timeoutMs, () => done(`no answer from ${host}:${port} within ${timeoutMs} ms`));
		socket.once("connect", () => done(null));
		socket.once("error", err => done(`${host}:${port} not reachable (${(err as NodeJS.ErrnoException).code ?? err.message})`));
	});
}

export function redact(url: string): string {
	try {
		const u = new URL(url);
		if (u.password) u.password = "***";
		return u.toString();
	} catch {
		return url;
	}
}

export function logTail(file: string, lines = 40): string {
	try {
		const text = fs.readFileSync(file, "utf8").trimEnd();
		return text ? text.split("\n").slice(-lines).join("\n") : "(empty log)";
	} catch {
		return "(no log)";
	}
}

export function sleep(ms: number): Promise<void> {
	return new Promise(resolve => setTimeout(resolve, ms));
}

// ---- server nodes ----

const PARLEY_VARIABLES = ["TRANSPORTER", "CHANNELS_URL", "DATABASE_URL", "MONGO_URL", "SERVICES", "NAMESPACE", "NODE_ID", "PORT", "HOST", "DATA_DIR", "ADMIN_EMAIL", "ADMIN_PASSWORD", "ADMIN_USERNAME", "NODE_OPTIONS"];

/** The environment of a node: this process's, minus every Parley setting, plus `extra`. */
function nodeEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
	const env: NodeJS.ProcessEnv = { ...process.env };
	for (const name of PARLEY_VARIABLES) delete env[name];
	return {
		...env,
		RATE_LIMIT: "0",
		RATE_LIMIT_AUTH: "0",
		BCRYPT_ROUNDS: "4",
		LOG_LEVEL: "warn",
		JWT_SECRET,
		// A token must outlive the run (the default 15 min is close to a long run).
		ACCESS_TOKEN_TTL: "3600",
		...extra,
	};
}

/** `node --import tsx <args>` in the project root, output to <logDir>/<name>.log. */
export function startProcess(name: string, logDir: string, args: string[], env: NodeJS.ProcessEnv): ServerNode {
	const logFile = path.join(logDir, `${name}.log`);
	const fd = fs.openSync(logFile, "a");
	let child: ChildProcess;
	try {
		child = spawn(process.execPath, ["--import", "tsx", ...args], { cwd: ROOT, env, stdio: ["ignore", fd, fd] });
	} finally {
		fs.closeSync(fd);
	}
	const node: ServerNode = { name, child, logFile, exitInfo: null, exited: Promise.resolve() };
	node.exited = new Promise(resolve => {
		child.once("exit", (code, signal) => {
			node.exitInfo = signal ? `signal ${signal}` : `code ${code}`;
			resolve();
		});
		child.once("error", err => {
			node.exitInfo = `spawn error: ${err.message}`;
			resolve();
		});
	});
	nodes.push(node);
	return node;
}

/**
 * `node --import tsx bin/runner.ts --config moleculer.config.ts` with the V8 flags of `npm start`
 * (lib/node-flags.ts). BENCH_NODE_ARGS (space-separated, after those: a flag given again wins)
 * go to node before the script, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof"
 * (written when the node exits on SIGTERM).
 */
export function startNode(name: string, logDir: string, extraEnv: Record<string, string>, nodeArgs: string[] = []): ServerNode {
	const benchArgs = (process.env.BENCH_NODE_ARGS ?? "").split(" ").filter(Boolean);
	return startProcess(name, logDir, [...NODE_FLAGS, ...benchArgs, ...nodeArgs, "bin/runner.ts", "--config", "moleculer.config.ts"], nodeEnv(extraEnv));
}

// ---- the inspector of a child started with INSPECT_ARG: force a GC, read the JS heap ----

/** Node flag for a child whose heap the bench reads: the inspector on a free loopback port, idle until used. */
export const INSPECT_ARG = "--inspect=127.0.0.1:0";

/** The inspector's WebSocket URL, from the "Debugger listening on ..." line of the child's log. */
export async function inspectorUrl(node: ServerNode, timeoutMs = 5_000): Promise<string | null> {
	const deadline = Date.now() + timeoutMs;
	for (;;) {
		try {
			const match = /Debugger listening on (ws:\/\/\S+)/.exec(fs.readFileSync(node.logFile, "utf8"));
			if (match) return match[1];
		} catch {
			// not written yet
		}
		if (Date.now() > deadline) return null;
		await sleep(100);
	}
}

/** Forces a full GC in the child (HeapProfiler.collectGarbage) and returns its JS heap in use, bytes. */
export async function heapAfterGc(url: string): Promise<number> {
	const { default: WebSocket } = await import("ws");
	const ws = new WebSocket(url);
	const pending = new Map<number, (result: unknown) => void>();
	let nextId = 1;
	ws.on("message", data => {
		const msg = JSON.parse(String(data)) as { id?: number; result?: unknown; error?: { message?: string } };
		if (msg.id !== undefined) pending.get(msg.id)?.(msg.error ? new Error(msg.error.message ?? "inspector error") : msg.result);
	});
	const call = (method: string) =>
		new Promise<unknown>((resolve, reject) => {
			const id = nextId++;
			const timer = setTimeout(() => reject(new Error(`inspector ${method}: no answer within 30 s`)), 30_000);
			pending.set(id, result => {
				clearTimeout(timer);
				if (result instanceof Error) reject(result);
				else resolve(result);
			});
			ws.send(JSON.stringify({ id, method }));
		});
	try {
		await new Promise<void>((resolve, reject) => {
			ws.once("open", () => resolve());
			ws.once("error", reject);
		});
		await call("HeapProfiler.collectGarbage");
		const usage = (await call("Runtime.getHeapUsage")) as { usedSize: number };
		return usage.usedSize;
	} finally {
		ws.close();
	}
}

export interface HealthBody {
	status?: string;
	node?: string;
	services?: string[];
	cluster?: string[];
}

/** Polls GET /health until it answers 200 and `ready(body)`; fails early if a node dies. */
export async function waitForHealth(baseUrl: string, watched: ServerNode[], ready: (body: HealthBody) => boolean = () => true): Promise<HealthBody> {
	const deadline = Date.now() + HEALTH_TIMEOUT_MS;
	let last: string | undefined;
	for (;;) {
		for (const node of watched) {
			if (node.exitInfo !== null) {
				throw new Error(`${node.name} exited (${node.exitInfo}) before it was ready. Last lines of ${path.basename(node.logFile)}:\n${logTail(node.logFile)}`);
			}
		}
		try {
			const res = await fetch(`${baseUrl}/health`, { signal: AbortSignal.timeout(2_000) });
			const text = await res.text();
			last = `${res.status} ${text.slice(0, 200)}`;
			if (res.status === 200) {
				const body = JSON.parse(text) as HealthBody;
				if (ready(body)) return body;
			}
		} catch (err) {
			last = (err as Error).message;
		}
		if (Date.now() > deadline) {
			const logs = watched.map(n => `--- ${path.basename(n.logFile)} ---\n${logTail(n.logFile)}`).join("\n");
			throw new Error(`${baseUrl}/health not ready within ${HEALTH_TIMEOUT_MS / 1000}s (last: ${last ?? "no answer"})\n${logs}`);
		}
		await sleep(200);
	}
}

/**
 * POST /auth/register of a fresh user; fails unless it answers 201 with an access token.
 * Returns the token, the parsed body and its text (for error messages).
 */
export async function registerBenchUser(baseUrl: string): Promise<{ token: string; body: { accessToken?: unknown; user?: { id?: unknown; user_id?: unknown } }; text: string }> {
	const tag = crypto.randomBytes(5).toString("hex");
	const res = await fetch(`${baseUrl}/auth/register`, {
		method: "POST",
		headers: { "content-type": "application/json" },
		body: JSON.stringify({ username: `bench_${tag}`, email: `bench_${tag}@example.test`, password: "bench password 123" }),
		signal: AbortSignal.timeout(15_000),
	});
	const text = await res.text();
	if (res.status !== 201) throw new Error(`POST /auth/register answered ${res.status}: ${text.slice(0, 500)}`);
	const body = JSON.parse(text) as { accessToken?: unknown; user?: { id?: unknown; user_id?: unknown } };
	const token = body.accessToken;
	if (typeof token !== "string" || !token) throw new Error(`POST /auth/register: no accessToken in ${text.slice(0, 500)}`);
	return { token, body, text };
}

// ---- cluster infrastructure ----

/** BENCH_AMQP_URL, else TEST_AMQP_URL, else the default; `skip` says why it cannot be used. */
export async function amqpUrl(): Promise<{ url: string; skip: string | null }> {
	const given = process.env.BENCH_AMQP_URL || process.env.TEST_AMQP_URL;
	const source = process.env.BENCH_AMQP_URL ? "BENCH_AMQP_URL" : process.env.TEST_AMQP_URL ? "TEST_AMQP_URL" : "default";
	const url = given || DEFAULT_AMQP_URL;
	let parsed: URL;
	try {
		parsed = new URL(url);
	} catch {
		return { url, skip: `${source} is not a URL` };
	}
	if (!/^amqps?:$/.test(parsed.protocol)) return { url, skip: `${source} ${redact(url)} is not an amqp:// URL` };
	const port = parsed.port ? Number(parsed.port) : parsed.protocol === "amqps:" ? 5671 : 5672;
	const reason = await tcpReachable(parsed.hostname || "127.0.0.1", port);
	return { url, skip: reason ? `${source} ${redact(url)}: ${reason}` : null };
}

/**
 * TEST_MONGO_URL (a MongoDB wire-protocol server, FerretDB in CI); `skip` says why it cannot be
 * used: unset, not a mongodb:// URL, or nothing answers on its host and port.
 */
export async function mongoUrl(): Promise<{ url: string; skip: string | null }> {
	const url = process.env.TEST_MONGO_URL || "";
	if (!url) return { url, skip: "TEST_MONGO_URL is not set" };
	let parsed: URL;
	try {
		parsed = new URL(url);
	} catch {
		return { url, skip: "TEST_MONGO_URL is not a URL" };
	}
	if (parsed.protocol !== "mongodb:") return { url, skip: `TEST_MONGO_URL ${redact(url)} is not a mongodb:// URL` };
	const reason = await tcpReachable(parsed.hostname || "127.0.0.1", parsed.port ? Number(parsed.port) : 27017);
	return { url, skip: reason ? `TEST_MONGO_URL ${redact(url)}: ${reason}` : null };
}

/** A fresh database on `serverUrl`'s PostgreSQL server, dropped by `cleanup()`; returns its URL. */
export async function createPostgresDatabase(serverUrl: string): Promise<string> {
	const name = `parley_bench_${crypto.randomBytes(4).toString("hex")}`;
	const admin = new Client({ connectionString: serverUrl });
	await admin.connect();
	try {
		await admin.query(`CREATE DATABASE ${name}`);
	} finally {
		await admin.end();
	}
	dropAtCleanup(async () => {
		const c = new Client({ connectionString: serverUrl });
		await c.connect();
		try {
			await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
		} finally {
			await c.end();
		}
	});
	const url = new URL(serverUrl);
	url.pathname = `/${name}`;
	return url.toString();
}

// ---- process figures from /proc (Linux) ----

let clockTicksPerSecond: number | null = null;

/** USER_HZ, the unit of utime/stime in /proc/<pid>/stat (100 nearly everywhere). */
function clockTicks(): number {
	if (clockTicksPerSecond === null) {
		try {
			clockTicksPerSecond = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
		} catch {
			clockTicksPerSecond = 100;
		}
	}
	return clockTicksPerSecond;
}

/** The fields of a /proc stat line after "(comm)": index 0 is field 3 (state). */
function statFields(text: string): { comm: string; rest: string[] } {
	const open = text.indexOf("(");
	const close = text.lastIndexOf(")");
	return { comm: text.slice(open + 1, close), rest: text.slice(close + 2).split(" ") };
}

/** CPU time (user + system, ms) of a process (all its threads), or of one thread with `tid`; null once it is gone. */
export function cpuMsOf(pid: number, tid?: number): number | null {
	try {
		const file = tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`;
		const { rest } = statFields(fs.readFileSync(file, "utf8"));
		// utime and stime are fields 14 and 15.
		return ((Number(rest[11]) + Number(rest[12])) * 1000) / clockTicks();
	} catch {
		return null;
	}
}

/** Resident set size of a process in bytes (VmRSS), or null once it is gone. */
export function rssOf(pid: number): number | null {
	try {
		const match = /^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
		return match ? Number(match[1]) * 1024 : null;
	} catch {
		return null;
	}
}

interface ProcInfo {
	pid: number;
	ppid: number;
	comm: string;
}

function listProcesses(): ProcInfo[] {
	const out: ProcInfo[] = [];
	let entries: string[];
	try {
		entries = fs.readdirSync("/proc");
	} catch {
		return out;
	}
	for (const entry of entries) {
		if (!/^\d+$/.test(entry)) continue;
		try {
			const { comm, rest } = statFields(fs.readFileSync(`/proc/${entry}/stat`, "utf8"));
			out.push({ pid: Number(entry), ppid: Number(rest[1]), comm });
		} catch {
			// gone meanwhile
		}
	}
	return out;
}

/** `roots` and every process below them. */
export function withDescendants(roots: number[]): number[] {
	const all = listProcesses();
	const found = new Set(roots);
	let grew = true;
	while (grew) {
		grew = false;
		for (const p of all) {
			if (!found.has(p.pid) && found.has(p.ppid)) {
				found.add(p.pid);
				grew = true;
			}
		}
	}
	return [...found];
}

/** Every process whose name (/proc/<pid>/comm) is one of `names`, with its descendants. */
export function processesNamed(names: string[]): number[] {
	const roots = listProcesses()
		.filter(p => names.includes(p.comm))
		.map(p => p.pid);
	return roots.length > 0 ? withDescendants(roots) : [];
}

/** CPU ms the whole machine has been busy (all cores: /proc/stat minus idle and iowait). */
export function machineBusyMs(): number {
	try {
		const line = fs.readFileSync("/proc/stat", "utf8").split("\n")[0];
		const [, ...fields] = line.trim().split(/\s+/);
		const ticks = fields.slice(0, 8).map(Number);
		const total = ticks.reduce((a, b) => a + b, 0);
		return ((total - ticks[3] - ticks[4]) * 1000) / clockTicks();
	} catch {
		return Number.NaN;
	}
}

/** Summed CPU ms of `pids`, by pid, so a later snapshot can be diffed against it. */
export function cpuSnapshot(pids: number[]): Map<number, number> {
	const snap = new Map<number, number>();
	for (const pid of pids) {
		const ms = cpuMsOf(pid);
		if (ms !== null) snap.set(pid, ms);
	}
	return snap;
}

/** CPU ms spent between two snapshots; a process that started in between counts from 0. */
export function cpuDelta(before: Map<number, number>, after: Map<number, number>): number {
	let sum = 0;
	for (const [pid, ms] of after) sum += ms - (before.get(pid) ?? 0);
	return sum;
}

// ---- percentiles ----

/** Latencies in ms, kept at full resolution for exact percentiles. */
export class LatencyRecorder {
	private values: Float64Array;
	private count = 0;

	constructor(initialCapacity: number) {
		this.values = new Float64Array(initialCapacity);
	}

	get size(): number {
		return this.count;
	}

	add(ms: number): void {
		if (this.count === this.values.length) {
			const bigger = new Float64Array(this.values.length * 2);
			bigger.set(this.values);
			this.values = bigger;
		}
		this.values[this.count++] = ms;
	}

	/** Nearest-rank percentile, as HdrHistogram reports it. */
	percentile(p: number): number {
		if (this.count === 0) return Number.NaN;
		const sorted = this.values.subarray(0, this.count).sort();
		return sorted[Math.min(this.count - 1, Math.max(0, Math.ceil((p / 100) * this.count) - 1))];
	}
}

// ---- output ----

/** The machine and node lines of a bench's header; returns the CPUs. */
export function printMachine(): os.CpuInfo[] {
	const cpus = os.cpus();
	console.log(`machine:  ${cpus.length} cores (${cpus[0]?.model.trim() ?? "unknown cpu"}), ${Math.round(os.totalmem() / 1024 ** 3)} GiB, ${os.platform()} ${os.release()}`);
	console.log(`node:     ${process.version}`);
	return cpus;
}

export function fmt(n: number, digits = 2): string {
	if (!Number.isFinite(n)) return "-";
	return n.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function fmtMs(n: number): string {
	return fmt(n, n < 10 ? 2 : 1);
}

/** A Markdown table; the columns in `right` are right-aligned. */
export function printTable(header: string[], body: string[][], right: Set<number>): void {
	const widths = header.map((h, i) => Math.max(h.length, ...body.map(line => line[i].length)));
	const line = (cells: string[]) => `| ${cells.map((c, i) => (right.has(i) ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join(" | ")} |`;
	console.log(line(header));
	console.log(`|${widths.map((w, i) => (right.has(i) ? `${"-".repeat(w + 1)}:` : `${"-".repeat(w + 2)}`)).join("|")}|`);
	for (const cells of body) console.log(line(cells));
}

/**
 * A throw-away Moleculer namespace on RabbitMQ for one cluster run, and the environment its nodes
 * share. Events published in it wait in durable queues, so those are removed at cleanup.
 */
export function throwAwayCluster(amqp: string): { namespace: string; common: Record<string, string> } {
	const namespace = `bench-${crypto.randomBytes(4).toString("hex")}`;
	dropAtCleanup(() => removeNamespaceTopology(amqp, namespace));
	return { namespace, common: { TRANSPORTER: amqp, NAMESPACE: namespace } };
}
