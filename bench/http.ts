/**
 * HTTP benchmark of the real system: `npm run bench:http`.
 *
 * 0. bare: the ceiling of the stack, run first: a tiny broker with one local action
 *    (`bare.me`, returning a small user-like object) behind a bare moleculer-web route
 *    (GET /bare, no auth, no middleware), in a child process (this file run as
 *    `bench/http.ts --bare <port>`). GET /users/me of every mode is reported as a ratio of it.
 * 1. embedded: one node with every service (no transporter, embedded PGlite store in a temp
 *    DATA_DIR), started as a separate process exactly as `npm start` does.
 * 2. cluster: a gateway node (SERVICES=api) and a users node (SERVICES=users) talking through
 *    RabbitMQ, so GET /users/me goes gateway -> RabbitMQ -> users node -> back. Runs only when
 *    an AMQP server answers (TEST_AMQP_URL, BENCH_AMQP_URL, else amqp://guest:guest@127.0.0.1:5672).
 *    The users node uses a fresh database on TEST_DATABASE_URL's server when that is set
 *    (created here, dropped at the end), otherwise the embedded store.
 *
 * Each route (GET /bare; GET /health and GET /users/me of each mode) gets a 2 s warm-up (not
 * reported), then BENCH_DURATION seconds (default 10) with BENCH_CONNECTIONS connections
 * (default 50), the same autocannon settings for all. Printed: req/s, p50/p99 of the 2xx answers
 * (full resolution), and req/s as a ratio to GET /bare ("vs bare"). The load generator (autocannon) runs in THIS
 * process and the servers in child processes ON THE SAME MACHINE: they compete for the same
 * cores (the reference machine has only 2), so the figures measure the whole box, load
 * generator included, and are lower than a server would reach with cores of its own.
 * Compare runs on the same machine only.
 *
 * Environment: BENCH_DURATION, BENCH_CONNECTIONS, BENCH_AMQP_URL / TEST_AMQP_URL, TEST_DATABASE_URL.
 * Exit code 0 on success, 1 on failure (child processes are stopped and temp dirs removed
 * in every case, Ctrl-C included).
 */
import path from "node:path";
import {
	amqpUrl,
	configureCleanup,
	createPostgresDatabase,
	fmt,
	fmtMs,
	freePort,
	handleSignals,
	LatencyRecorder,
	makeTempDir,
	positiveNumberEnv,
	printMachine,
	printTable,
	redact,
	registerBenchUser,
	runMain,
	throwAwayCluster,
	startNode,
	startProcess,
	stopNode,
	waitForHealth,
} from "./common";

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

const WARMUP_SECONDS = 2;
const DURATION = positiveNumberEnv("BENCH_DURATION", 10, true);
const CONNECTIONS = positiveNumberEnv("BENCH_CONNECTIONS", 50, true);

// ---- cleanup (bench/common.ts): children, temp dirs, the database, and the running autocannon ----

let currentRun: AutocannonInstance | null = null;
configureCleanup({ beforeStop: () => currentRun?.stop(), databaseLabel: "the bench database" });

// ---- helpers ----

async function registerUser(baseUrl: string): Promise<string> {
	const { token } = await registerBenchUser(baseUrl);
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
 * latencies of 2xx answers are also collected into `latencies`, at full resolution, for p50 and p99.
 */
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
	const latencies = new LatencyRecorder(1 << 16);
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

async function bareMode(): Promise<void> {
	console.log("\n== bare: one local action behind a bare moleculer-web route (the ceiling) ==");
	const dir = makeTempDir("bare");
	const port = await freePort();
	const env: NodeJS.ProcessEnv = { ...process.env };
	delete env.NODE_OPTIONS;
	const node = startProcess("bare", dir, [path.join("bench", "http.ts"), "--bare", String(port)], env);
	const baseUrl = `http://127.0.0.1:${port}`;
	const started = Date.now();
	await waitForHealth(baseUrl, [node]);
	console.log(`  ready in ${((Date.now() - started) / 1000).toFixed(1)}s`);
	await bench("bare", baseUrl, "/bare");
	await stopNode(node);
}

async function clusterMode(amqp: string): Promise<void> {
	const pgServer = process.env.TEST_DATABASE_URL || "";
	const store = pgServer ? "postgres" : "pglite";
	const mode = `cluster/amqp+${store}`;
	console.log(`\n== cluster: api node + users node through RabbitMQ (${redact(amqp)}), users store: ${pgServer ? `PostgreSQL ${redact(pgServer)}` : "embedded PGlite"} ==`);
	const { namespace, common } = throwAwayCluster(amqp);
	const dir = makeTempDir("cluster");

	const usersEnv: Record<string, string> = { ...common, SERVICES: "users", DATA_DIR: path.join(dir, "users-data") };
	if (pgServer) {
		usersEnv.DATABASE_URL = await createPostgresDatabase(pgServer);
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

function printResults(): void {
	const bare = rows.find(r => r.mode === "bare");
	const ratio = (r: Row) => (r.mode === "bare" ? "1 (ceiling)" : bare ? `${fmt(r.reqPerSec / bare.reqPerSec, 2)}x` : "-");
	const header = ["mode", "route", "req/s", "vs bare", "p50 ms", "p99 ms", "non-2xx", "errors"];
	const body = rows.map(r => [r.mode, r.route, fmt(r.reqPerSec, 0), ratio(r), fmtMs(r.p50), fmtMs(r.p99), String(r.non2xx), String(r.errors)]);
	printTable(header, body, new Set([2, 3, 4, 5, 6, 7]));
	if (bare) {
		console.log("");
		for (const r of rows.filter(row => row.route === "GET /users/me")) {
			console.log(
				`GET /users/me, ${r.mode}: ${fmt(r.reqPerSec, 0)} req/s = ${fmt(r.reqPerSec / bare.reqPerSec, 2)}x the bare moleculer-web route (${fmt(bare.reqPerSec, 0)} req/s); ` +
					`p50 ${fmtMs(r.p50)} ms (bare ${fmtMs(bare.p50)}), p99 ${fmtMs(r.p99)} ms (bare ${fmtMs(bare.p99)})`,
			);
		}
	}
}

async function main(): Promise<void> {
	console.log("Parley HTTP benchmark");
	const cpus = printMachine();
	console.log(`settings: duration ${DURATION}s per route (after ${WARMUP_SECONDS}s warm-up), ${CONNECTIONS} connections, pipelining 1`);
	console.log("servers:  RATE_LIMIT=0 RATE_LIMIT_AUTH=0 BCRYPT_ROUNDS=4 LOG_LEVEL=warn; autocannon runs in this process, on the same cores as the servers");

	await bareMode();
	await embeddedMode();

	const amqp = await amqpUrl();
	if (amqp.skip) {
		console.log(`\ncluster mode skipped: ${amqp.skip}`);
	} else {
		await clusterMode(amqp.url);
	}

	console.log(`\nResults (${DURATION}s per route, ${CONNECTIONS} connections, ${cpus.length} cores shared by load generator and servers, node ${process.version}):\n`);
	printResults();
	console.log(
		"\nreq/s: mean of the per-second samples; p50/p99: latency of the 2xx answers, from send to full answer;" +
			"\nvs bare: req/s as a share of GET /bare, one local action behind a bare moleculer-web route on the same machine and settings (the stack's ceiling).",
	);
	const failed = rows.filter(r => r.non2xx > 0 || r.errors > 0);
	if (failed.length > 0) {
		throw new Error(`non-2xx answers or errors in: ${failed.map(r => `${r.mode} ${r.route} (${r.statusCodes}, errors ${r.errors})`).join("; ")}`);
	}
}

// ---- the bare gateway (child process: bench/http.ts --bare <port>) ----

async function runBare(port: number): Promise<void> {
	const { ServiceBroker } = await import("moleculer");
	const ApiGateway = (await import("moleculer-web")).default;
	const broker = new ServiceBroker({ nodeID: "bare", logger: false, metrics: { enabled: false }, tracing: { enabled: false } });
	broker.createService({
		name: "bare",
		actions: {
			me: () => ({ id: 1, username: "bare", display_name: "Bare", avatar_url: null, status: "online", created_at: "2024-01-01T00:00:00.000Z" }),
			health: () => ({ status: "ok", node: "bare", services: ["bare"] }),
		},
	});
	broker.createService({
		name: "api",
		mixins: [ApiGateway],
		settings: {
			port,
			ip: "127.0.0.1",
			routes: [{ path: "/", mappingPolicy: "restrict", aliases: { "GET /bare": "bare.me", "GET /health": "bare.health" } }],
		},
	});
	for (const signal of ["SIGINT", "SIGTERM"] as const) {
		process.on(signal, () => {
			void broker.stop().finally(() => process.exit(0));
			setTimeout(() => process.exit(0), 2_000).unref();
		});
	}
	await broker.start();
	console.log(`bare gateway listening on 127.0.0.1:${port}`);
}

const bareIndex = process.argv.indexOf("--bare");
if (bareIndex >= 0) {
	const port = Number(process.argv[bareIndex + 1]);
	if (!Number.isInteger(port) || port < 1) {
		console.error("usage: bench/http.ts --bare <port>");
		process.exit(2);
	}
	runBare(port).catch((err: unknown) => {
		console.error("bare gateway failed:", err);
		process.exit(1);
	});
} else {
	handleSignals();
	runMain(main);
}
