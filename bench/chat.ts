/**
 * Live chat benchmark of the real system: `npm run bench:chat`.
 *
 * BENCH_CLIENTS socket clients (default 40), one user each, in BENCH_CONVERSATIONS
 * conversations (default 20): groups of CLIENTS/CONVERSATIONS members, or private pairs when
 * that is 2. Every client sends `message:send` at a fixed rate (BENCH_RATE messages/s, default 2)
 * for a 2 s warm-up (not reported), then BENCH_DURATION seconds (default 15), then sending stops
 * and up to 5 s are left for the last messages to arrive (the drain).
 *
 * Delivery latency is measured per recipient: from the sender's `message:send` emit to
 * `message:created` arriving on another member's socket. Every client lives in this process, so
 * one clock (performance.now) times both ends; the send time is kept in a map keyed by clientId.
 * `message:created` also reaches the sender's own socket (it is a participant): that echo is
 * counted separately and is not a delivery.
 *
 * Modes, in one run:
 * 1. embedded: one node with every service on embedded stores (temp DATA_DIR), as `npm start`.
 * 2. cluster: two gateway nodes (SERVICES=api, each its own port) and one node running
 *    users,conversations,messages, all on one TRANSPORTER (RabbitMQ). Half of the clients
 *    connect to each gateway, and the members of every conversation alternate between them, so
 *    a message sent on gateway 1 reaches sockets on gateway 2 through the Moleculer broadcast.
 *    Runs only when an AMQP server answers (BENCH_AMQP_URL, TEST_AMQP_URL, else
 *    amqp://guest:guest@127.0.0.1:5672). Users store: a fresh database on TEST_DATABASE_URL's
 *    server when set (dropped at the end), else embedded. Documents: TEST_MONGO_URL with a
 *    unique database name (dropped at the end) when set, else embedded.
 * 3. relay: the same client harness against a bare Socket.IO relay (this file run as
 *    `bench/chat.ts --relay <port>` in a child process): namespace /chat, no auth, no storage;
 *    `conversation:join` puts a socket in a room, `message:send` acks and emits `message:created`
 *    to the room. The other modes are reported as ratios of it.
 *
 * The clients run in THIS process and every server in child processes ON THE SAME MACHINE: the
 * reference machine has only 2 cores, shared by clients and servers, so the figures measure the
 * whole box. Compare runs on the same machine only. At a fixed offered rate the delivered msg/s
 * equals the offered rate as long as the system keeps up; latency is the figure that moves.
 *
 * Environment: BENCH_CLIENTS, BENCH_CONVERSATIONS, BENCH_RATE, BENCH_DURATION,
 * BENCH_AMQP_URL / TEST_AMQP_URL, TEST_DATABASE_URL, TEST_MONGO_URL.
 * Exit code 1 if messages were lost (fewer deliveries than expected after the drain), an ack
 * failed or never came, or a mode could not run; 0 otherwise. Child processes are stopped
 * (SIGTERM, then SIGKILL after 10 s), temp dirs removed and databases dropped in every case,
 * Ctrl-C included.
 */
import crypto from "node:crypto";
import http from "node:http";
import path from "node:path";
import { performance } from "node:perf_hooks";
import mongoose from "mongoose";
import { io as connectSocket, type Socket as ClientSocket } from "socket.io-client";
import {
	amqpUrl,
	configureCleanup,
	createPostgresDatabase,
	dropAtCleanup,
	fmt,
	fmtMs,
	freePort,
	handleSignals,
	isInterrupted,
	LatencyRecorder,
	logTail,
	makeTempDir,
	positiveNumberEnv,
	printMachine,
	printTable,
	redact,
	registerBenchUser,
	runMain,
	throwAwayCluster,
	type HealthBody,
	type ServerNode,
	sleep,
	startNode,
	startProcess,
	stopNode,
	waitForHealth,
} from "./common";

// ---- settings ----

const WARMUP_SECONDS = 2;
const DRAIN_MS = 5_000;
const CONNECT_TIMEOUT_MS = 15_000;
const SETUP_ACK_TIMEOUT_MS = 15_000;
const MiB = 1024 * 1024;

interface Settings {
	clients: number;
	conversations: number;
	rate: number;
	duration: number;
}

function readSettings(): Settings {
	const s: Settings = {
		clients: positiveNumberEnv("BENCH_CLIENTS", 40, true),
		conversations: positiveNumberEnv("BENCH_CONVERSATIONS", 20, true),
		rate: positiveNumberEnv("BENCH_RATE", 2, false),
		duration: positiveNumberEnv("BENCH_DURATION", 15, true),
	};
	if (s.clients < 2 * s.conversations) {
		throw new Error(`BENCH_CLIENTS (${s.clients}) must be at least 2 x BENCH_CONVERSATIONS (${s.conversations}): every conversation needs two members`);
	}
	return s;
}

// ---- cleanup (bench/common.ts): children, temp dirs, databases, and the open sockets ----

const sockets = new Set<ClientSocket>();

function closeSockets(): void {
	for (const socket of sockets) socket.disconnect();
	sockets.clear();
}

configureCleanup({ beforeStop: closeSockets, databaseLabel: "a bench database" });

// ---- helpers ----

/** Runs `fn` over `items`, at most `limit` at a time, results in order. */
async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
	const out = new Array<R>(items.length);
	let next = 0;
	const worker = async () => {
		while (next < items.length) {
			const i = next++;
			out[i] = await fn(items[i], i);
		}
	};
	await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
	return out;
}

/** A node that died during a run makes the figures meaningless: say so with its log. */
function assertAlive(watched: ServerNode[]): void {
	for (const node of watched) {
		if (node.exitInfo !== null) {
			throw new Error(`${node.name} exited (${node.exitInfo}) during the run. Last lines of ${path.basename(node.logFile)}:\n${logTail(node.logFile)}`);
		}
	}
}

async function registerUser(baseUrl: string): Promise<{ token: string; userId: number }> {
	const { token, body, text } = await registerBenchUser(baseUrl);
	const userId = Number(body.user?.id ?? body.user?.user_id);
	if (!Number.isInteger(userId)) throw new Error(`POST /auth/register: no user id in ${text.slice(0, 500)}`);
	return { token, userId };
}

// ---- the client harness ----

interface Ack {
	ok?: boolean;
	data?: { id?: unknown; _id?: unknown };
	error?: { code?: string; message?: string };
}

interface BenchClient {
	index: number;
	userId: number;
	token: string;
	gateway: number;
	conversation: number;
	socket: ClientSocket | null;
}

interface BenchConversation {
	index: number;
	members: number[]; // client indexes; the first one creates it
	type: "private" | "group";
	id: string;
}

/** A sent message: who sent it, when, and which recipients have it. */
interface SentMessage {
	sender: number;
	conversation: number;
	at: number;
	measured: boolean;
	acked: boolean;
	received: Set<number>;
	echoed: boolean;
}

interface ModeResult {
	mode: string;
	conversations: string;
	sent: number;
	ackedOk: number;
	ackFailed: number;
	ackMissing: number;
	ackErrorCodes: Map<string, number>;
	expected: number;
	delivered: number;
	echoes: number;
	duplicates: number;
	disconnects: number;
	/** Deliveries (any bench message) arriving inside the measured window, per second. */
	deliveredPerSec: number;
	offeredPerSec: number;
	p50: number;
	p99: number;
	ackP50: number;
	drainMs: number;
}

interface Target {
	/** Gateway base URLs; client i connects to bases[client.gateway]. */
	bases: string[];
	/** Registers the users and creates the conversations (the real system) or joins rooms (the relay). */
	kind: "parley" | "relay";
	/** Nodes whose death fails the run. */
	watched: ServerNode[];
}

function layout(settings: Settings, gateways: number): { clients: BenchClient[]; conversations: BenchConversation[] } {
	const conversations: BenchConversation[] = Array.from({ length: settings.conversations }, (_, index) => ({ index, members: [], type: "group" as const, id: "" }));
	const clients: BenchClient[] = [];
	for (let index = 0; index < settings.clients; index++) {
		const conv = conversations[index % settings.conversations];
		// Members of a conversation alternate between the gateways, so every conversation crosses them.
		clients.push({ index, userId: 0, token: "", gateway: conv.members.length % gateways, conversation: conv.index, socket: null });
		conv.members.push(index);
	}
	for (const conv of conversations) conv.type = conv.members.length === 2 ? "private" : "group";
	return { clients, conversations };
}

function describeConversations(conversations: BenchConversation[]): string {
	const sizes = [...new Set(conversations.map(c => c.members.length))].sort((a, b) => a - b);
	const types = [...new Set(conversations.map(c => c.type))].join("+");
	return `${conversations.length} ${types} x${sizes.join("/")}`;
}

function connect(base: string, token: string): Promise<ClientSocket> {
	const socket = connectSocket(`${base}/chat`, { auth: { token }, transports: ["websocket"], forceNew: true, reconnection: false, timeout: CONNECT_TIMEOUT_MS });
	sockets.add(socket);
	return new Promise((resolve, reject) => {
		const timer = setTimeout(() => reject(new Error(`socket to ${base}/chat not connected within ${CONNECT_TIMEOUT_MS} ms`)), CONNECT_TIMEOUT_MS);
		socket.once("connect", () => {
			clearTimeout(timer);
			resolve(socket);
		});
		socket.once("connect_error", err => {
			clearTimeout(timer);
			reject(new Error(`socket to ${base}/chat refused: ${err.message}`));
		});
	});
}

async function setupAck(socket: ClientSocket, event: string, payload: unknown): Promise<Ack> {
	const ack = (await socket.timeout(SETUP_ACK_TIMEOUT_MS).emitWithAck(event, payload)) as Ack;
	if (!ack?.ok) throw new Error(`${event} ${JSON.stringify(payload)} acked ${JSON.stringify(ack)}`);
	return ack;
}

async function prepare(target: Target, settings: Settings): Promise<{ clients: BenchClient[]; conversations: BenchConversation[] }> {
	const { clients, conversations } = layout(settings, target.bases.length);
	const started = Date.now();
	if (target.kind === "parley") {
		await mapLimit(clients, 8, async c => {
			const { token, userId } = await registerUser(target.bases[c.gateway]);
			c.token = token;
			c.userId = userId;
		});
	} else {
		for (const c of clients) {
			c.userId = c.index + 1;
			c.token = "relay";
		}
	}
	await mapLimit(clients, 10, async c => {
		c.socket = await connect(target.bases[c.gateway], c.token);
	});
	const sock = (i: number) => clients[i].socket as ClientSocket;
	await mapLimit(conversations, 5, async conv => {
		const [creator, ...others] = conv.members;
		if (target.kind === "relay") {
			conv.id = `relay-${conv.index}`;
			await Promise.all(conv.members.map(m => setupAck(sock(m), "conversation:join", { conversationId: conv.id })));
			return;
		}
		const participants = others.map(m => clients[m].userId);
		const payload = conv.type === "private" ? { type: "private", participants } : { type: "group", participants, name: `bench ${conv.index}` };
		const ack = await setupAck(sock(creator), "conversation:create", payload);
		const id = ack.data?.id ?? ack.data?._id;
		if (typeof id !== "string" || !id) throw new Error(`conversation:create acked without an id: ${JSON.stringify(ack).slice(0, 300)}`);
		conv.id = id;
		// A private chat starts as a message request: the other side accepts it before replying.
		if (conv.type === "private") await setupAck(sock(others[0]), "conversation:accept", { conversationId: id });
	});
	const gatewaysUsed = target.bases.map((_, g) => clients.filter(c => c.gateway === g).length).join("+");
	console.log(`  setup in ${((Date.now() - started) / 1000).toFixed(1)}s: ${clients.length} clients connected (${gatewaysUsed} per gateway), ${describeConversations(conversations)}`);
	return { clients, conversations };
}

async function runLoad(mode: string, target: Target, settings: Settings): Promise<ModeResult> {
	const { clients, conversations } = await prepare(target, settings);
	const runTag = crypto.randomBytes(3).toString("hex");
	const prefix = `bench-${runTag}-`;
	const messages = new Map<string, SentMessage>();
	const latencies = new LatencyRecorder(1 << 14);
	const ackLatencies = new LatencyRecorder(1 << 14);
	const ackErrorCodes = new Map<string, number>();
	let sent = 0;
	let ackedOk = 0;
	let ackFailed = 0;
	let expected = 0;
	let delivered = 0;
	let echoes = 0;
	let duplicates = 0;
	let disconnects = 0;
	let windowDeliveries = 0;
	let sending = true;

	const interval = 1000 / settings.rate;
	const startAt = performance.now() + 100;
	const t0 = startAt + WARMUP_SECONDS * 1000;
	const t1 = t0 + settings.duration * 1000;

	for (const client of clients) {
		const socket = client.socket as ClientSocket;
		socket.on("disconnect", reason => {
			if (reason === "io client disconnect") return; // closed by this harness (end of run, Ctrl-C)
			disconnects++;
			console.error(`  client ${client.index} disconnected: ${reason}`);
		});
		socket.on("message:created", (payload: { clientId?: unknown; client_id?: unknown } | null) => {
			const now = performance.now();
			const id = payload?.clientId ?? payload?.client_id;
			if (typeof id !== "string" || !id.startsWith(prefix)) return; // system messages and the like
			const msg = messages.get(id);
			if (!msg) return;
			if (client.index === msg.sender) {
				if (msg.echoed) duplicates++;
				else if (msg.measured) echoes++;
				msg.echoed = true;
				return;
			}
			if (msg.received.has(client.index)) {
				duplicates++;
				return;
			}
			msg.received.add(client.index);
			if (now >= t0 && now < t1) windowDeliveries++;
			if (msg.measured) {
				delivered++;
				latencies.add(now - msg.at);
			}
		});
	}

	const send = (client: BenchClient, seq: number) => {
		const conv = conversations[client.conversation];
		const clientId = `${prefix}${client.index}-${seq}`;
		const at = performance.now();
		const measured = at >= t0 && at < t1;
		const msg: SentMessage = { sender: client.index, conversation: conv.index, at, measured, acked: false, received: new Set(), echoed: false };
		messages.set(clientId, msg);
		if (measured) {
			sent++;
			expected += conv.members.length - 1;
		}
		(client.socket as ClientSocket).emit("message:send", { conversationId: conv.id, content: `bench message ${seq} from client ${client.index}`, clientId }, (ack: Ack) => {
			msg.acked = true;
			if (!measured) return;
			if (ack?.ok) {
				ackedOk++;
				ackLatencies.add(performance.now() - at);
			} else {
				ackFailed++;
				const code = ack?.error?.code ?? "NO_CODE";
				ackErrorCodes.set(code, (ackErrorCodes.get(code) ?? 0) + 1);
				if (ackFailed <= 5) console.error(`  client ${client.index}: message:send acked ${JSON.stringify(ack).slice(0, 300)}`);
			}
		});
	};

	// Open loop: every client sends on its own fixed schedule (spread over the first interval),
	// whatever the answers, so a slow system sees the same offered load as a fast one.
	const timers = new Set<NodeJS.Timeout>();
	for (const client of clients) {
		const offset = (client.index / clients.length) * interval;
		let seq = 0;
		const next = () => {
			const due = startAt + offset + seq * interval;
			if (!sending || due >= t1) return;
			const timer = setTimeout(
				() => {
					timers.delete(timer);
					if (!sending) return;
					send(client, seq++);
					next();
				},
				Math.max(0, due - performance.now()),
			);
			timers.add(timer);
		};
		next();
	}

	const offeredPerSec = conversations.reduce((sum, conv) => sum + conv.members.length * (conv.members.length - 1), 0) * settings.rate;
	process.stdout.write(`  warm-up ${WARMUP_SECONDS}s... `);
	await sleep(Math.max(0, t0 - performance.now()));
	process.stdout.write(`measuring ${settings.duration}s... `);
	while (performance.now() < t1) {
		await sleep(Math.min(500, Math.max(1, t1 - performance.now())));
		assertAlive(target.watched);
	}
	for (const timer of timers) clearTimeout(timer);
	timers.clear();

	// Drain: the last messages get up to DRAIN_MS to arrive and be acked.
	process.stdout.write("draining... ");
	const drainStart = performance.now();
	const measuredMessages = [...messages.values()].filter(m => m.measured);
	const settled = () => delivered >= expected && measuredMessages.every(m => m.acked);
	while (!settled() && performance.now() - drainStart < DRAIN_MS) await sleep(50);
	const drainMs = performance.now() - drainStart;
	sending = false;
	assertAlive(target.watched);

	const ackMissing = measuredMessages.filter(m => !m.acked).length;
	for (const client of clients) {
		client.socket?.disconnect();
		if (client.socket) sockets.delete(client.socket);
	}

	return {
		mode,
		conversations: describeConversations(conversations),
		sent,
		ackedOk,
		ackFailed,
		ackMissing,
		ackErrorCodes,
		expected,
		delivered,
		echoes,
		duplicates,
		disconnects,
		deliveredPerSec: windowDeliveries / settings.duration,
		offeredPerSec,
		p50: latencies.percentile(50),
		p99: latencies.percentile(99),
		ackP50: ackLatencies.percentile(50),
		drainMs,
	};
}

// ---- modes ----

interface Row {
	mode: string;
	result: ModeResult | null;
	failure: string | null;
}

const rows: Row[] = [];

async function runMode(mode: string, body: () => Promise<ModeResult>): Promise<void> {
	try {
		const result = await body();
		rows.push({ mode, result, failure: null });
		const lost = result.expected - result.delivered;
		console.log(
			`done\n  sent ${result.sent}, acked ok ${result.ackedOk}, failed acks ${result.ackFailed}, no ack ${result.ackMissing}; ` +
				`delivered ${result.delivered}/${result.expected} (lost ${lost}), sender echoes ${result.echoes}/${result.sent}, duplicates ${result.duplicates}, disconnects ${result.disconnects}; ` +
				`${fmt(result.deliveredPerSec, 1)} deliveries/s (offered ${fmt(result.offeredPerSec, 0)}/s), p50 ${fmtMs(result.p50)} ms, p99 ${fmtMs(result.p99)} ms, ack p50 ${fmtMs(result.ackP50)} ms, drain ${fmt(result.drainMs / 1000, 1)}s`,
		);
	} catch (err) {
		if (isInterrupted()) throw err;
		const message = err instanceof Error ? err.message : String(err);
		console.error(`\n  ${mode} failed: ${message}`);
		rows.push({ mode, result: null, failure: message.split("\n")[0] });
	} finally {
		closeSockets();
	}
}

async function embeddedMode(settings: Settings): Promise<ModeResult> {
	console.log("\n== embedded: one process, every service, embedded stores ==");
	const dir = makeTempDir("chat-embedded");
	const port = await freePort();
	const node = startNode("embedded", dir, { PORT: String(port), DATA_DIR: path.join(dir, "data") });
	const base = `http://127.0.0.1:${port}`;
	try {
		const started = Date.now();
		const health = await waitForHealth(base, [node]);
		console.log(`  ready in ${((Date.now() - started) / 1000).toFixed(1)}s (node ${health.node}, services ${(health.services ?? []).join(",")})`);
		return await runLoad("embedded", { bases: [base], kind: "parley", watched: [node] }, settings);
	} finally {
		closeSockets();
		await stopNode(node);
	}
}

/** TEST_MONGO_URL with a database of its own; registered to be dropped at the end. */
function mongoDatabase(serverUrl: string): string {
	const url = new URL(serverUrl);
	url.pathname = `/parley_bench_${crypto.randomBytes(4).toString("hex")}`;
	const dbUrl = url.toString();
	dropAtCleanup(async () => {
		const conn = mongoose.createConnection(dbUrl, { serverSelectionTimeoutMS: 5_000 });
		try {
			await conn.asPromise();
			await conn.dropDatabase();
		} finally {
			await conn.close();
		}
	});
	return dbUrl;
}

async function clusterMode(settings: Settings, amqp: string): Promise<ModeResult> {
	const pgServer = process.env.TEST_DATABASE_URL || "";
	const mongoServer = process.env.TEST_MONGO_URL || "";
	console.log(
		`\n== cluster: 2 api nodes + 1 users,conversations,messages node through RabbitMQ (${redact(amqp)}); ` +
			`users: ${pgServer ? `PostgreSQL ${redact(pgServer)}` : "embedded PGlite"}; documents: ${mongoServer ? `MongoDB ${redact(mongoServer)}` : "embedded NeDB"} ==`,
	);
	const { namespace, common } = throwAwayCluster(amqp);
	const dir = makeTempDir("chat-cluster");

	const servicesEnv: Record<string, string> = { ...common, SERVICES: "users,conversations,messages", DATA_DIR: path.join(dir, "services-data") };
	if (pgServer) {
		servicesEnv.DATABASE_URL = await createPostgresDatabase(pgServer);
		console.log(`  PostgreSQL database ${new URL(servicesEnv.DATABASE_URL).pathname.slice(1)} created (dropped at the end)`);
	}
	if (mongoServer) {
		servicesEnv.MONGO_URL = mongoDatabase(mongoServer);
		console.log(`  MongoDB database ${new URL(servicesEnv.MONGO_URL).pathname.slice(1)} (dropped at the end)`);
	}
	const ports = [await freePort(), await freePort()];
	const api1 = startNode("api1", dir, { ...common, SERVICES: "api", PORT: String(ports[0]), DATA_DIR: path.join(dir, "api1-data") });
	const api2 = startNode("api2", dir, { ...common, SERVICES: "api", PORT: String(ports[1]), DATA_DIR: path.join(dir, "api2-data") });
	const services = startNode("services", dir, servicesEnv);
	const watched = [api1, api2, services];
	const bases = ports.map(p => `http://127.0.0.1:${p}`);
	try {
		const started = Date.now();
		const wanted = ["users", "conversations", "messages"];
		const ready = (body: HealthBody) => Array.isArray(body.cluster) && wanted.every(s => body.cluster?.includes(s));
		const health = await Promise.all(bases.map(b => waitForHealth(b, watched, ready)));
		console.log(`  ready in ${((Date.now() - started) / 1000).toFixed(1)}s (namespace ${namespace}, gateways ${health.map(h => h.node).join(" + ")}, cluster ${(health[0].cluster ?? []).join(",")})`);
		const mode = `cluster/amqp+${pgServer ? "postgres" : "pglite"}+${mongoServer ? "mongo" : "nedb"}`;
		return await runLoad(mode, { bases, kind: "parley", watched }, settings);
	} finally {
		closeSockets();
		await Promise.all(watched.map(stopNode));
	}
}

async function relayMode(settings: Settings): Promise<ModeResult> {
	console.log("\n== relay: bare Socket.IO server, namespace /chat, rooms only (no auth, no storage, no broker) ==");
	const dir = makeTempDir("chat-relay");
	const port = await freePort();
	const env: NodeJS.ProcessEnv = { ...process.env };
	delete env.NODE_OPTIONS;
	const node = startProcess("relay", dir, [path.join("bench", "chat.ts"), "--relay", String(port)], env);
	const base = `http://127.0.0.1:${port}`;
	try {
		const started = Date.now();
		await waitForHealth(base, [node]);
		console.log(`  ready in ${((Date.now() - started) / 1000).toFixed(1)}s`);
		return await runLoad("relay", { bases: [base], kind: "relay", watched: [node] }, settings);
	} finally {
		closeSockets();
		await stopNode(node);
	}
}

// ---- the relay server (child process: bench/chat.ts --relay <port>) ----

async function runRelay(port: number): Promise<void> {
	const { Server } = await import("socket.io");
	const server = http.createServer((req, res) => {
		if (req.url === "/health") {
			res.writeHead(200, { "content-type": "application/json" });
			res.end(JSON.stringify({ status: "ok", node: "relay", services: ["relay"] }));
			return;
		}
		res.writeHead(404);
		res.end();
	});
	const ioServer = new Server(server, { maxHttpBufferSize: 2 * MiB });
	const chat = ioServer.of("/chat");
	let seq = 0;
	chat.on("connection", socket => {
		const ackOf = (args: unknown[]) => (typeof args[args.length - 1] === "function" ? (args[args.length - 1] as (r: unknown) => void) : () => undefined);
		socket.on("conversation:join", (...args: unknown[]) => {
			const ack = ackOf(args);
			const { conversationId } = (args[0] ?? {}) as { conversationId?: unknown };
			if (typeof conversationId !== "string") return ack({ ok: false, error: { code: "VALIDATION_ERROR", message: "conversationId" } });
			void socket.join(`conversation:${conversationId}`);
			ack({ ok: true });
		});
		socket.on("message:send", (...args: unknown[]) => {
			const ack = ackOf(args);
			const { conversationId, content, clientId } = (args[0] ?? {}) as { conversationId?: unknown; content?: unknown; clientId?: unknown };
			if (typeof conversationId !== "string" || typeof content !== "string") return ack({ ok: false, error: { code: "VALIDATION_ERROR", message: "conversationId, content" } });
			const now = new Date().toISOString();
			const id = String(++seq);
			const message = { id, _id: id, conversation_id: conversationId, content, client_id: clientId ?? null, clientId: clientId ?? null, created_at: now, createdAt: now };
			// As the real system: push to the room (the sender included), then ack.
			chat.to(`conversation:${conversationId}`).emit("message:created", message);
			ack({ ok: true, data: message });
		});
	});
	for (const signal of ["SIGINT", "SIGTERM"] as const) {
		process.on(signal, () => {
			void ioServer.close(() => process.exit(0));
			setTimeout(() => process.exit(0), 2_000).unref();
		});
	}
	await new Promise<void>((resolve, reject) => {
		server.once("error", reject);
		server.listen(port, "127.0.0.1", () => resolve());
	});
	console.log(`relay listening on 127.0.0.1:${port}`);
}

// ---- output ----

function errorCount(r: ModeResult): number {
	return r.ackFailed + r.ackMissing + r.disconnects;
}

function printResults(settings: Settings): void {
	const relay = rows.find(r => r.mode === "relay")?.result ?? null;
	const ratio = (r: ModeResult) => {
		if (r.mode === "relay") return "1 (baseline)";
		if (!relay) return "-";
		return `${fmt(r.deliveredPerSec / relay.deliveredPerSec, 2)}x msg/s, ${fmt(r.p50 / relay.p50, 1)}x p50`;
	};
	const header = ["mode", "clients", "conversations", "rate/client", "delivered msg/s", "p50 ms", "p99 ms", "lost", "errors", "ratio vs relay"];
	const body = rows.map(({ mode, result: r, failure }) =>
		r
			? [mode, String(settings.clients), r.conversations, `${fmt(settings.rate, settings.rate % 1 === 0 ? 0 : 2)}/s`, fmt(r.deliveredPerSec, 1), fmtMs(r.p50), fmtMs(r.p99), String(r.expected - r.delivered), String(errorCount(r)), ratio(r)]
			: [mode, String(settings.clients), "-", "-", "-", "-", "-", "-", `failed: ${(failure ?? "").slice(0, 80)}`, "-"],
	);
	printTable(header, body, new Set([1, 3, 4, 5, 6, 7, 8]));

	console.log("");
	const detailHeader = ["mode", "sent", "acked ok", "failed acks", "no ack", "delivered", "expected", "sender echoes", "duplicates", "disconnects", "ack p50 ms", "drain s"];
	const detail = rows
		.filter(r => r.result)
		.map(({ mode, result }) => {
			const r = result as ModeResult;
			const codes = [...r.ackErrorCodes].map(([code, n]) => `${code}x${n}`).join(" ");
			return [mode, String(r.sent), String(r.ackedOk), `${r.ackFailed}${codes ? ` (${codes})` : ""}`, String(r.ackMissing), String(r.delivered), String(r.expected), `${r.echoes}/${r.sent}`, String(r.duplicates), String(r.disconnects), fmtMs(r.ackP50), fmt(r.drainMs / 1000, 1)];
		});
	printTable(detailHeader, detail, new Set([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]));
}

async function main(): Promise<void> {
	const settings = readSettings();
	console.log("Parley chat (Socket.IO) benchmark");
	const cpus = printMachine();
	console.log(
		`settings: ${settings.clients} clients in ${settings.conversations} conversations, ${settings.rate} msg/s per client, ` +
			`${settings.duration}s measured after ${WARMUP_SECONDS}s warm-up, drain up to ${DRAIN_MS / 1000}s`,
	);
	console.log("servers:  RATE_LIMIT=0 RATE_LIMIT_AUTH=0 BCRYPT_ROUNDS=4 LOG_LEVEL=warn; the clients run in this process, on the same cores as the servers");

	await runMode("embedded", () => embeddedMode(settings));

	const amqp = await amqpUrl();
	if (amqp.skip) console.log(`\ncluster mode skipped: ${amqp.skip}`);
	else await runMode("cluster", () => clusterMode(settings, amqp.url));

	await runMode("relay", () => relayMode(settings));

	console.log(`\nResults (${settings.duration}s measured, ${cpus.length} cores shared by clients and servers, node ${process.version}):\n`);
	printResults(settings);
	console.log(
		"\ndelivered msg/s: message:created arrivals on other members' sockets inside the measured window, per second (the offered load is clients x rate x (members-1));" +
			"\np50/p99: per recipient, from the sender's message:send emit to message:created on the recipient's socket, messages sent in the window;" +
			`\nlost: expected deliveries (members-1 per message sent in the window) not arrived ${DRAIN_MS / 1000}s after sending stopped; errors: failed acks + missing acks + disconnects.` +
			"\nsender echoes: message:created also reaches the sender's own socket (it is a participant); not counted as deliveries.",
	);

	const problems: string[] = [];
	for (const { mode, result: r, failure } of rows) {
		if (failure) problems.push(`${mode}: ${failure}`);
		else if (r && (r.expected - r.delivered > 0 || errorCount(r) > 0)) {
			problems.push(`${mode}: lost ${r.expected - r.delivered} of ${r.expected} deliveries, ${r.ackFailed} failed acks, ${r.ackMissing} missing acks, ${r.disconnects} disconnects`);
		}
	}
	if (problems.length > 0) throw new Error(problems.join("; "));
}

const relayIndex = process.argv.indexOf("--relay");
if (relayIndex >= 0) {
	const port = Number(process.argv[relayIndex + 1]);
	if (!Number.isInteger(port) || port < 1) {
		console.error("usage: bench/chat.ts --relay <port>");
		process.exit(2);
	}
	runRelay(port).catch((err: unknown) => {
		console.error("relay failed:", err);
		process.exit(1);
	});
} else {
	handleSignals();
	runMain(main);
}
