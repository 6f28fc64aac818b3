/**
 * HTTP benchmark of the real system: `npm run bench:http`.
 *
 * 1. embedded: one node with every service (no transporter, embedded PGlite store in a temp
 *    DATA_DIR), started as a separate process exactly as `npm start` does.
 * 2. cluster: a gateway node (SERVICES=api) and a users node (SERVICES=users) talking through
 *    RabbitMQ, so GET /users/me goes gateway -> RabbitMQ -> users node -> back. Runs only when
 *    an AMQP server answers (TEST_AMQP_URL, BENCH_AMQP_URL, else amqp://guest:guest@127.0.0.1:5672).
 *    The users node uses a fresh database on TEST_DATABASE_URL's server when that is set
 *    (created here, dropped at the end), otherwise the embedded store.
 *
 * Each route gets a 2 s warm-up (not reported), then BENCH_DURATION seconds (default 10) with
 * BENCH_CONNECTIONS connections (default 50). The load generator (autocannon) runs in THIS
 * process and the servers in child processes ON THE SAME MACHINE: they compete for the same
 * cores (the reference machine has only 2), so the figures measure the whole box, load
 * generator included, and are lower than a server would reach with cores of its own.
 * Compare runs on the same machine only.
 *
 * Environment: BENCH_DURATION, BENCH_CONNECTIONS, BENCH_AMQP_URL / TEST_AMQP_URL, TEST_DATABASE_URL.
 * Exit code 0 on success, 1 on failure (child processes are stopped and temp dirs removed
 * in every case, Ctrl-C included).
 */
import { spawn, type ChildProcess } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { Client } from "pg";

// ---- autocannon (ships no types): the part of its API used here ----

interface Histogram {
	average: number;
	p50: number;
	p99: number;
	total?: number;
}

interface AutocannonResult {
	requests: Histogram;
	duration: number;
	errors: number;
	timeouts: number;
	non2xx: number;
	statusCodeStats: Record<string, { count: number }>;
}

interface AutocannonOptions {
	url: string;
	connections: number;
	duration: number;
	method?: string;
	headers?: Record<string, string>;
}

interface AutocannonInstance extends PromiseLike<AutocannonResult> {
	stop(): void;
	/** Every answer; responseTime in ms with sub-millisecond digits. */
	on(event: "response", listener: (client: unknown, statusCode: number, resBytes: number, responseTime: number) => void): unknown;
}

const autocannon = require("autocannon") as (opts: AutocannonOptions) => AutocannonInstance;

// ---- settings ----

const ROOT = path.resolve(__dirname, "..");
const WARMUP_SECONDS = 2;
const HEALTH_TIMEOUT_MS = 60_000;
const KILL_GRACE_MS = 10_000;
const DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672";

function positiveIntEnv(name: string, fallback: number): number {
	const raw = process.env[name];
	if (raw == null || raw.trim() === "") return fallback;
	const value = Number(raw);
	if (!Number.isInteger(value) || value < 1) throw new Error(`${name} must be a whole number >= 1, got "${raw}"`);
	return value;
}

const DURATION = positiveIntEnv("BENCH_DURATION", 10);
const CONNECTIONS = positiveIntEnv("BENCH_CONNECTIONS", 50);
const JWT_SECRET = crypto.randomBytes(32).toString("base64url"); // 43 characters

// ---- cleanup: every child, temp dir and database is registered here as soon as it exists ----

interface ServerNode {
	name: string;
	child: ChildProcess;
	logFile: string;
	exited: Promise<void>;
	exitInfo: string | null;
}

const nodes: ServerNode[] = [];
const tempDirs: string[] = [];
const databasesToDrop: (() => Promise<void>)[] = [];
let currentRun: AutocannonInstance | null = null;
let cleanupPromise: Promise<void> | null = null;

async function stopNode(node: ServerNode): Promise<void> {
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

function cleanup(): Promise<void> {
	cleanupPromise ??= (async () => {
		currentRun?.stop();
		await Promise.all(nodes.map(n => stopNode(n).catch((err: unknown) => console.error(`stopping ${n.name}:`, err))));
		for (const drop of databasesToDrop) {
			await drop().catch((err: unknown) => console.error("dropping the bench database:", err));
		}
		for (const dir of tempDirs) {
			try {
				fs.rmSync(dir, { recursive: true, force: true });
			} catch (err) {
				console.error(`removing ${dir}:`, err);
			}
		}
	})();
	return cleanupPromise;
}

let interrupted = false;
for (const signal of ["SIGINT", "SIGTERM"] as const) {
	process.on(signal, () => {
		if (interrupted) return;
		interrupted = true;
		console.error(`\n${signal}: stopping the servers and cleaning up...`);
		void cleanup().finally(() => process.exit(1));
	});
}

// ---- helpers ----

function makeTempDir(label: string): string {
	const dir = fs.mkdtempSync(path.join(os.tmpdir(), `parley-bench-${label}-`));
	tempDirs.push(dir);
	return dir;
}

function freePort(): Promise<number> {
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

function tcpReachable(host: string, port: number, timeoutMs = 2_000): Promise<string | null> {
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

function redact(url: string): string {
	try {
		const u = new URL(url);
		if (u.password) u.password = "***";
		return u.toString();
	} catch {
		return url;
	}
}

function logTail(file: string, lines = 40): string {
	try {
		const text = fs.readFileSync(file, "utf8").trimEnd();
		return text ? text.split("\n").slice(-lines).join("\n") : "(empty log)";
	} catch {
		return "(no log)";
	}
}

function sleep(ms: number): Promise<void> {
	return new Promise(resolve => setTimeout(resolve, ms));
}

/** The environment of a node: this process's, minus every Parley setting, plus `extra`. */
function nodeEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
	const env: NodeJS.ProcessEnv = { ...process.env };
	for (const name of ["TRANSPORTER", "DATABASE_URL", "MONGO_URL", "SERVICES", "NAMESPACE", "NODE_ID", "PORT", "HOST", "DATA_DIR", "ADMIN_EMAIL", "ADMIN_PASSWORD", "ADMIN_USERNAME", "NODE_OPTIONS"]) {
		delete env[name];
	}
	return {
		...env,
		RATE_LIMIT: "0",
		RATE_LIMIT_AUTH: "0",
		BCRYPT_ROUNDS: "4",
		LOG_LEVEL: "warn",
		JWT_SECRET,
		// A token must outlive the run (the default 15 min is close to a default cluster+embedded run).
		ACCESS_TOKEN_TTL: "3600",
		...extra,
	};
}

/** `node --import tsx bin/runner.ts --config moleculer.config.ts`, output to <logDir>/<name>.log. */
function startNode(name: string, logDir: string, extraEnv: Record<string, string>): ServerNode {
	const logFile = path.join(logDir, `${name}.log`);
	const fd = fs.openSync(logFile, "a");
	let child: ChildProcess;
	try {
		child = spawn(process.execPath, ["--import", "tsx", "bin/runner.ts", "--config", "moleculer.config.ts"], {
			cwd: ROOT,
			env: nodeEnv(extraEnv),
			stdio: ["ignore", fd, fd],
		});
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

interface HealthBody {
	status?: string;
	node?: string;
	services?: string[];
	cluster?: string[];
}

/** Polls GET /health until it answers 200 and `ready(body)`; fails early if a node dies. */
async function waitForHealth(baseUrl: string, watched: ServerNode[], ready: (body: HealthBody) => boolean = () => true): Promise<HealthBody> {
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

async function registerUser(baseUrl: string): Promise<string> {
	const tag = crypto.randomBytes(5).toString("hex");
	const res = await fetch(`${baseUrl}/auth/register`, {
		method: "POST",
		headers: { "content-type": "application/json" },
		body: JSON.stringify({ username: `bench_${tag}`, email: `bench_${tag}@example.test`, password: "bench password 123" }),
		signal: AbortSignal.timeout(15_000),
	});
	const text = await res.text();
	if (res.status !== 201) throw new Error(`POST /auth/register answered ${res.status}: ${text.slice(0, 500)}`);
	const token = (JSON.parse(text) as { accessToken?: unknown }).accessToken;
	if (typeof token !== "string" || !token) throw new Error(`POST /auth/register: no accessToken in ${text.slice(0, 500)}`);
	// One authenticated call first, so a bad token fails here and not as a table of 401s.
	const me = await fetch(`${baseUrl}/users/me`, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(15_000) });
	if (me.status !== 200) throw new Error(`GET /users/me with the new token answered ${me.status}: ${(await me.text()).slice(0, 500)}`);
	return token;
}

// ---- the benchmark ----

interface Row {
	mode: string;
	route: string;
	reqPerSec: number;
	p50: number;
	p99: number;
	total: number;
	non2xx: number;
	errors: number;
	timeouts: number;
	statusCodes: string;
}

const rows: Row[] = [];

/**
 * autocannon's own latency histogram keeps whole milliseconds (a 0.6 ms answer is "0"), so the
 * latencies of 2xx answers are also collected here, at full resolution, for p50 and p99.
 */
class LatencyRecorder {
	private values = new Float64Array(1 << 16);
	private count = 0;

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

async function cannon(opts: AutocannonOptions, latencies?: LatencyRecorder): Promise<AutocannonResult> {
	const run = autocannon(opts);
	currentRun = run;
	if (latencies) {
		run.on("response", (_client, statusCode, _bytes, responseTime) => {
			if (statusCode >= 200 && statusCode < 300) latencies.add(responseTime);
		});
	}
	try {
		return await run;
	} finally {
		currentRun = null;
	}
}

async function bench(mode: string, baseUrl: string, route: string, headers: Record<string, string> = {}): Promise<void> {
	const url = `${baseUrl}${route}`;
	process.stdout.write(`  ${mode} GET ${route}: warm-up ${WARMUP_SECONDS}s... `);
	await cannon({ url, connections: CONNECTIONS, duration: WARMUP_SECONDS, headers });
	process.stdout.write(`measuring ${DURATION}s... `);
	const latencies = new LatencyRecorder();
	const r = await cannon({ url, connections: CONNECTIONS, duration: DURATION, headers }, latencies);
	const statusCodes = Object.entries(r.statusCodeStats)
		.map(([code, { count }]) => `${code}x${count}`)
		.join(" ");
	const row: Row = {
		mode,
		route: `GET ${route}`,
		reqPerSec: r.requests.average,
		p50: latencies.percentile(50),
		p99: latencies.percentile(99),
		total: r.requests.total ?? 0,
		non2xx: r.non2xx,
		errors: r.errors,
		timeouts: r.timeouts,
		statusCodes,
	};
	rows.push(row);
	console.log(`${row.total} requests, ${fmt(row.reqPerSec, 0)} req/s, p50 ${fmtMs(row.p50)} ms, p99 ${fmtMs(row.p99)} ms, status ${statusCodes || "none"}, errors ${row.errors} (timeouts ${row.timeouts})`);
}

async function benchBothRoutes(mode: string, baseUrl: string): Promise<void> {
	const token = await registerUser(baseUrl);
	await bench(mode, baseUrl, "/health");
	await bench(mode, baseUrl, "/users/me", { authorization: `Bearer ${token}` });
}

async function embeddedMode(): Promise<void> {
	console.log("\n== embedded: one process, every service, embedded PGlite store ==");
	const dir = makeTempDir("embedded");
	const port = await freePort();
	const node = startNode("embedded", dir, { PORT: String(port), DATA_DIR: path.join(dir, "data") });
	const baseUrl = `http://127.0.0.1:${port}`;
	const started = Date.now();
	const health = await waitForHealth(baseUrl, [node]);
	console.log(`  ready in ${((Date.now() - started) / 1000).toFixed(1)}s (node ${health.node}, services ${(health.services ?? []).join(",")})`);
	await benchBothRoutes("embedded", baseUrl);
	await stopNode(node);
}

async function amqpUrl(): Promise<{ url: string; skip: string | null }> {
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

async function createBenchDatabase(serverUrl: string): Promise<string> {
	const name = `parley_bench_${crypto.randomBytes(4).toString("hex")}`;
	const admin = new Client({ connectionString: serverUrl });
	await admin.connect();
	try {
		await admin.query(`CREATE DATABASE ${name}`);
	} finally {
		await admin.end();
	}
	databasesToDrop.push(async () => {
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

async function clusterMode(amqp: string): Promise<void> {
	const pgServer = process.env.TEST_DATABASE_URL || "";
	const store = pgServer ? "postgres" : "pglite";
	const mode = `cluster/amqp+${store}`;
	console.log(`\n== cluster: api node + users node through RabbitMQ (${redact(amqp)}), users store: ${pgServer ? `PostgreSQL ${redact(pgServer)}` : "embedded PGlite"} ==`);
	const namespace = `bench-${crypto.randomBytes(4).toString("hex")}`;
	const dir = makeTempDir("cluster");
	const common = { TRANSPORTER: amqp, NAMESPACE: namespace };

	const usersEnv: Record<string, string> = { ...common, SERVICES: "users", DATA_DIR: path.join(dir, "users-data") };
	if (pgServer) {
		usersEnv.DATABASE_URL = await createBenchDatabase(pgServer);
		console.log(`  database ${new URL(usersEnv.DATABASE_URL).pathname.slice(1)} created (dropped at the end)`);
	}
	const port = await freePort();
	const api = startNode("api", dir, { ...common, SERVICES: "api", PORT: String(port), DATA_DIR: path.join(dir, "api-data") });
	const users = startNode("users", dir, usersEnv);
	const baseUrl = `http://127.0.0.1:${port}`;
	const started = Date.now();
	const health = await waitForHealth(baseUrl, [api, users], body => Array.isArray(body.cluster) && body.cluster.includes("users"));
	console.log(`  ready in ${((Date.now() - started) / 1000).toFixed(1)}s (namespace ${namespace}, gateway ${health.node}, cluster ${(health.cluster ?? []).join(",")})`);
	await benchBothRoutes(mode, baseUrl);
	await Promise.all([stopNode(api), stopNode(users)]);
}

// ---- output ----

function fmt(n: number, digits = 2): string {
	if (!Number.isFinite(n)) return "-";
	return n.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function fmtMs(n: number): string {
	return fmt(n, n < 10 ? 2 : 1);
}

function printTable(): void {
	const header = ["mode", "route", "req/s", "p50 ms", "p99 ms", "non-2xx", "errors"];
	const body = rows.map(r => [r.mode, r.route, fmt(r.reqPerSec, 0), fmtMs(r.p50), fmtMs(r.p99), String(r.non2xx), String(r.errors)]);
	const widths = header.map((h, i) => Math.max(h.length, ...body.map(line => line[i].length)));
	const right = new Set([2, 3, 4, 5, 6]);
	const line = (cells: string[]) => `| ${cells.map((c, i) => (right.has(i) ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join(" | ")} |`;
	console.log(line(header));
	console.log(`|${widths.map((w, i) => (right.has(i) ? `${"-".repeat(w + 1)}:` : `${"-".repeat(w + 2)}`)).join("|")}|`);
	for (const cells of body) console.log(line(cells));
}

async function main(): Promise<void> {
	const cpus = os.cpus();
	console.log("Parley HTTP benchmark");
	console.log(`machine:  ${cpus.length} cores (${cpus[0]?.model.trim() ?? "unknown cpu"}), ${Math.round(os.totalmem() / 1024 ** 3)} GiB, ${os.platform()} ${os.release()}`);
	console.log(`node:     ${process.version}`);
	console.log(`settings: duration ${DURATION}s per route (after ${WARMUP_SECONDS}s warm-up), ${CONNECTIONS} connections, pipelining 1`);
	console.log("servers:  RATE_LIMIT=0 RATE_LIMIT_AUTH=0 BCRYPT_ROUNDS=4 LOG_LEVEL=warn; autocannon runs in this process, on the same cores as the servers");

	await embeddedMode();

	const amqp = await amqpUrl();
	if (amqp.skip) {
		console.log(`\ncluster mode skipped: ${amqp.skip}`);
	} else {
		await clusterMode(amqp.url);
	}

	console.log(`\nResults (${DURATION}s per route, ${CONNECTIONS} connections, ${cpus.length} cores shared by load generator and servers, node ${process.version}):\n`);
	printTable();
	console.log("\nreq/s: mean of the per-second samples; p50/p99: latency of the 2xx answers, from send to full answer.");
	const failed = rows.filter(r => r.non2xx > 0 || r.errors > 0);
	if (failed.length > 0) {
		throw new Error(`non-2xx answers or errors in: ${failed.map(r => `${r.mode} ${r.route} (${r.statusCodes}, errors ${r.errors})`).join("; ")}`);
	}
}

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
