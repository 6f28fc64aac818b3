/**
 * The Socket.IO client harness and the server set-ups shared by the chat benchmarks
 * (bench/chat.ts, fixed rate, and bench/chat-find-max.ts, `--find-max`).
 *
 * - Clients: BenchClient / BenchConversation, the layout (conversation i%N; the members of a
 *   conversation alternate between the gateways), registering users, connecting /chat sockets,
 *   creating (and accepting) the conversations or, on the relay, joining rooms. Every open socket
 *   is in `sockets`, which bench/common.ts's cleanup closes first.
 * - Targets, one per mode, each started in child processes here and stopped by `stop()`:
 *   - embedded: one node with every service on embedded stores (temp DATA_DIR), as `npm start`;
 *   - cluster: two gateway nodes (SERVICES=api, a port each), a chat node
 *     (SERVICES=users,conversations,messages,files) and a notifications node
 *     (SERVICES=notifications), all on TRANSPORTER=RabbitMQ; users in a fresh PostgreSQL
 *     database on TEST_DATABASE_URL's server (embedded PGlite when unset), documents in each
 *     node's embedded NeDB;
 *   - mongo: as embedded, but MONGO_URL = TEST_MONGO_URL with a fresh database name (FerretDB);
 *   - relay: a bare Socket.IO server (this harness run as `bench/chat.ts --relay <port>`),
 *     namespace /chat, no auth, no storage, no broker: `conversation:join` puts the socket in a
 *     room, `message:send` emits `message:created` to the room, then acks.
 *   Each target also names the processes outside the bench that do its work (RabbitMQ,
 *   PostgreSQL, FerretDB, found by name in /proc) so their CPU can be charged to it.
 * Every node gets RATE_LIMIT=0 RATE_LIMIT_AUTH=0 (the names lib/config.ts reads; bench/common.ts).
 */
import crypto from "node:crypto";
import http from "node:http";
import path from "node:path";
import mongoose from "mongoose";
import { io as connectSocket, type Socket as ClientSocket } from "socket.io-client";
import {
	amqpUrl,
	configureCleanup,
	createPostgresDatabase,
	dropAtCleanup,
	freePort,
	INSPECT_ARG,
	logTail,
	makeTempDir,
	mongoUrl,
	processesNamed,
	redact,
	registerBenchUser,
	type HealthBody,
	type ServerNode,
	startNode,
	startProcess,
	stopNode,
	throwAwayCluster,
	waitForHealth,
} from "./common";

const CONNECT_TIMEOUT_MS = 15_000;
const SETUP_ACK_TIMEOUT_MS = 15_000;
const MiB = 1024 * 1024;

// ---- cleanup (bench/common.ts): children, temp dirs, databases, and the open sockets ----

export const sockets = new Set<ClientSocket>();

export function closeSockets(): void {
	for (const socket of sockets) socket.disconnect();
	sockets.clear();
}

configureCleanup({ beforeStop: closeSockets, databaseLabel: "a bench database" });

// ---- helpers ----

/** Runs `fn` over `items`, at most `limit` at a time, results in order. */
export async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
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
export function assertAlive(watched: ServerNode[]): void {
	for (const node of watched) {
		if (node.exitInfo !== null) {
			throw new Error(`${node.name} exited (${node.exitInfo}) during the run. Last lines of ${path.basename(node.logFile)}:\n${logTail(node.logFile)}`);
		}
	}
}

// ---- the client harness ----

export interface Ack {
	ok?: boolean;
	data?: { id?: unknown; _id?: unknown };
	error?: { code?: string; message?: string };
}

export interface BenchClient {
	index: number;
	userId: number;
	token: string;
	gateway: number;
	conversation: number;
	socket: ClientSocket | null;
}

export interface BenchConversation {
	index: number;
	members: number[]; // client indexes; the first one creates it
	type: "private" | "group";
	id: string;
}

export interface Shape {
	clients: number;
	conversations: number;
}

export interface Target {
	/** "embedded", "cluster/amqp+postgres+nedb", "mongo", "relay". */
	mode: string;
	/** Users and conversations (the real system) or rooms only (the relay). */
	kind: "parley" | "relay";
	/** Gateway base URLs; client i connects to bases[client.gateway]. */
	bases: string[];
	/** The bench's server nodes: their death fails the run; their CPU and RSS are the server's. */
	watched: ServerNode[];
	/** Processes outside the bench doing this target's work (RabbitMQ, PostgreSQL, FerretDB), by label; looked up again at each use. */
	external: { label: string; pids: () => number[] }[];
	stop(): Promise<void>;
}

export function layout(shape: Shape, gateways: number): { clients: BenchClient[]; conversations: BenchConversation[] } {
	const conversations: BenchConversation[] = Array.from({ length: shape.conversations }, (_, index) => ({ index, members: [], type: "group" as const, id: "" }));
	const clients: BenchClient[] = [];
	for (let index = 0; index < shape.clients; index++) {
		const conv = conversations[index % shape.conversations];
		// Members of a conversation alternate between the gateways, so every conversation crosses them.
		clients.push({ index, userId: 0, token: "", gateway: conv.members.length % gateways, conversation: conv.index, socket: null });
		conv.members.push(index);
	}
	for (const conv of conversations) conv.type = conv.members.length === 2 ? "private" : "group";
	return { clients, conversations };
}

export function describeConversations(conversations: BenchConversation[]): string {
	const sizes = [...new Set(conversations.map(c => c.members.length))].sort((a, b) => a - b);
	const types = [...new Set(conversations.map(c => c.type))].join("+");
	return `${conversations.length} ${types} x${sizes.join("/")}`;
}

export function connect(base: string, token: string): Promise<ClientSocket> {
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

/** A user per client on the real system (POST /auth/register on the client's gateway); made-up ids on the relay. */
export async function registerClients(target: Target, clients: BenchClient[]): Promise<void> {
	if (target.kind === "relay") {
		for (const c of clients) {
			c.userId = c.index + 1;
			c.token = "relay";
		}
		return;
	}
	await mapLimit(clients, 8, async c => {
		const { token, body, text } = await registerBenchUser(target.bases[c.gateway]);
		const userId = Number(body.user?.id ?? body.user?.user_id);
		if (!Number.isInteger(userId)) throw new Error(`POST /auth/register: no user id in ${text.slice(0, 500)}`);
		c.token = token;
		c.userId = userId;
	});
}

/** One /chat socket per client, on its gateway. */
export async function connectClients(target: Target, clients: BenchClient[]): Promise<void> {
	await mapLimit(clients, 10, async c => {
		c.socket = await connect(target.bases[c.gateway], c.token);
	});
}

/** The conversations, created by their first member (a private one accepted by the other), or the relay's rooms joined. */
export async function createConversations(target: Target, clients: BenchClient[], conversations: BenchConversation[]): Promise<void> {
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
}

export function describeSetup(target: Target, clients: BenchClient[], conversations: BenchConversation[], started: number): string {
	const gatewaysUsed = target.bases.map((_, g) => clients.filter(c => c.gateway === g).length).join("+");
	return `setup in ${((Date.now() - started) / 1000).toFixed(1)}s: ${clients.length} clients connected (${gatewaysUsed} per gateway), ${describeConversations(conversations)}`;
}

/** Users, sockets and conversations in one go (the fixed-rate bench). */
export async function prepare(target: Target, shape: Shape): Promise<{ clients: BenchClient[]; conversations: BenchConversation[] }> {
	const { clients, conversations } = layout(shape, target.bases.length);
	const started = Date.now();
	await registerClients(target, clients);
	await connectClients(target, clients);
	await createConversations(target, clients, conversations);
	console.log(`  ${describeSetup(target, clients, conversations, started)}`);
	return { clients, conversations };
}

// ---- modes ----

export const MODE_NAMES = ["embedded", "cluster", "mongo", "relay"] as const;
export type ModeName = (typeof MODE_NAMES)[number];

/**
 * `--modes a,b` from argv (null when absent): the modes asked for explicitly, checked against
 * `allowed`.
 */
export function modesFromArgs(argv: string[], allowed: readonly string[]): string[] | null {
	const i = argv.findIndex(a => a === "--modes" || a.startsWith("--modes="));
	if (i < 0) return null;
	const raw = argv[i].includes("=") ? argv[i].slice(argv[i].indexOf("=") + 1) : (argv[i + 1] ?? "");
	const modes = raw
		.split(",")
		.map(s => s.trim())
		.filter(Boolean);
	const unknown = modes.filter(m => !allowed.includes(m));
	if (modes.length === 0 || unknown.length > 0) throw new Error(`--modes takes a comma list of ${allowed.join(", ")}; got "${raw}"`);
	return modes;
}

/** Why `mode` cannot run here (a server it needs does not answer), or null. */
export async function modeSkipReason(mode: ModeName): Promise<string | null> {
	if (mode === "cluster") return (await amqpUrl()).skip;
	if (mode === "mongo") return (await mongoUrl()).skip;
	return null;
}

/**
 * Starts `mode`'s servers and waits until they are ready. `inspect`: a single-process mode's
 * node also gets INSPECT_ARG (its inspector, idle until the bench forces a GC to read its heap).
 */
export async function startTarget(mode: ModeName, inspect = false): Promise<Target> {
	const nodeArgs = inspect ? [INSPECT_ARG] : [];
	switch (mode) {
		case "embedded":
			return startEmbedded(nodeArgs);
		case "cluster":
			return startCluster((await amqpUrl()).url);
		case "mongo":
			return startMongo((await mongoUrl()).url, nodeArgs);
		case "relay":
			return startRelay(nodeArgs);
	}
}

async function singleNode(mode: string, label: string, extraEnv: Record<string, string>, external: Target["external"], nodeArgs: string[]): Promise<Target> {
	const dir = makeTempDir(`chat-${mode}`);
	const port = await freePort();
	const node = startNode(mode, dir, { ...extraEnv, PORT: String(port), DATA_DIR: path.join(dir, "data") }, nodeArgs);
	const base = `http://127.0.0.1:${port}`;
	const target: Target = { mode, kind: "parley", bases: [base], watched: [node], external, stop: () => stopNode(node) };
	try {
		const started = Date.now();
		const health = await waitForHealth(base, [node]);
		console.log(`  ${label} ready in ${((Date.now() - started) / 1000).toFixed(1)}s (node ${health.node}, pid ${node.child.pid}, services ${(health.services ?? []).join(",")})`);
	} catch (err) {
		await target.stop();
		throw err;
	}
	return target;
}

function startEmbedded(nodeArgs: string[]): Promise<Target> {
	console.log("\n== embedded: one process, every service, embedded stores (PGlite, NeDB) ==");
	return singleNode("embedded", "node", {}, [], nodeArgs);
}

/** `serverUrl` with a database of its own, dropped at the end. */
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

const ferretPids = () => processesNamed(["ferretdb", "mongod"]);
const postgresPids = () => processesNamed(["postgres"]);
const rabbitPids = () => processesNamed(["beam.smp"]);

function startMongo(serverUrl: string, nodeArgs: string[]): Promise<Target> {
	const dbUrl = mongoDatabase(serverUrl);
	console.log(`\n== mongo: one process, every service; documents in MongoDB ${redact(dbUrl)} (dropped at the end), users in embedded PGlite ==`);
	return singleNode("mongo", "node", { MONGO_URL: dbUrl }, [{ label: "MongoDB server (ferretdb/mongod)", pids: ferretPids }], nodeArgs);
}

async function startCluster(amqp: string): Promise<Target> {
	const pgServer = process.env.TEST_DATABASE_URL || "";
	const mode = `cluster/amqp+${pgServer ? "postgres" : "pglite"}+nedb`;
	console.log(
		`\n== cluster: 2 api nodes + 1 users,conversations,messages,files node + 1 notifications node through RabbitMQ (${redact(amqp)}); ` +
			`users: ${pgServer ? `PostgreSQL ${redact(pgServer)}` : "embedded PGlite (TEST_DATABASE_URL unset)"}; documents: embedded NeDB on each node ==`,
	);
	const { namespace, common } = throwAwayCluster(amqp);
	const dir = makeTempDir("chat-cluster");
	const chatEnv: Record<string, string> = { ...common, SERVICES: "users,conversations,messages,files", DATA_DIR: path.join(dir, "chat-data") };
	if (pgServer) {
		chatEnv.DATABASE_URL = await createPostgresDatabase(pgServer);
		console.log(`  PostgreSQL database ${new URL(chatEnv.DATABASE_URL).pathname.slice(1)} created (dropped at the end)`);
	}
	const ports = [await freePort(), await freePort()];
	const api1 = startNode("api1", dir, { ...common, SERVICES: "api", PORT: String(ports[0]), DATA_DIR: path.join(dir, "api1-data") });
	const api2 = startNode("api2", dir, { ...common, SERVICES: "api", PORT: String(ports[1]), DATA_DIR: path.join(dir, "api2-data") });
	const chat = startNode("chat", dir, chatEnv);
	const notifications = startNode("notifications", dir, { ...common, SERVICES: "notifications", DATA_DIR: path.join(dir, "notifications-data") });
	const watched = [api1, api2, chat, notifications];
	const bases = ports.map(p => `http://127.0.0.1:${p}`);
	const external: Target["external"] = [{ label: "RabbitMQ (beam.smp)", pids: rabbitPids }];
	if (pgServer) external.push({ label: "PostgreSQL (postgres)", pids: postgresPids });
	const target: Target = { mode, kind: "parley", bases, watched, external, stop: async () => void (await Promise.all(watched.map(stopNode))) };
	try {
		const started = Date.now();
		const wanted = ["users", "conversations", "messages", "files", "notifications"];
		const ready = (body: HealthBody) => Array.isArray(body.cluster) && wanted.every(s => body.cluster?.includes(s));
		const health = await Promise.all(bases.map(b => waitForHealth(b, watched, ready)));
		console.log(
			`  ready in ${((Date.now() - started) / 1000).toFixed(1)}s (namespace ${namespace}, gateways ${health.map(h => h.node).join(" + ")}, ` +
				`pids ${watched.map(n => `${n.name}=${n.child.pid}`).join(" ")}, cluster ${(health[0].cluster ?? []).join(",")})`,
		);
	} catch (err) {
		await target.stop();
		throw err;
	}
	return target;
}

async function startRelay(nodeArgs: string[]): Promise<Target> {
	console.log("\n== relay: bare Socket.IO server, namespace /chat, rooms only (no auth, no storage, no broker) ==");
	const dir = makeTempDir("chat-relay");
	const port = await freePort();
	const env: NodeJS.ProcessEnv = { ...process.env };
	delete env.NODE_OPTIONS;
	const node = startProcess("relay", dir, [...nodeArgs, path.join("bench", "chat.ts"), "--relay", String(port)], env);
	const base = `http://127.0.0.1:${port}`;
	const target: Target = { mode: "relay", kind: "relay", bases: [base], watched: [node], external: [], stop: () => stopNode(node) };
	try {
		const started = Date.now();
		await waitForHealth(base, [node]);
		console.log(`  relay ready in ${((Date.now() - started) / 1000).toFixed(1)}s (pid ${node.child.pid})`);
	} catch (err) {
		await target.stop();
		throw err;
	}
	return target;
}

// ---- the relay server (child process: bench/chat.ts --relay <port>) ----

export async function runRelay(port: number): Promise<void> {
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
