/**
 * Chat benchmark of the real system over Socket.IO: `npm run bench:chat`.
 *
 * Two benchmarks share this entry point:
 * - without flags, the FIXED-RATE bench below;
 * - `--find-max`: the open-loop search for the highest sustainable message rate, with memory
 *   figures and server CPU per message, in bench/chat-find-max.ts (see there).
 * `--relay <port>` runs the bare Socket.IO relay server both use as a baseline (a child process
 * the bench starts itself; bench/chat-harness.ts).
 * `--modes embedded,cluster,mongo,relay` picks the modes (both benches); default: every mode whose
 * servers answer, a skipped one said so. A mode asked for explicitly that cannot run fails the run.
 *
 * Fixed rate: BENCH_CLIENTS socket clients (default 40), one user each, in BENCH_CONVERSATIONS
 * conversations (default 20): groups of CLIENTS/CONVERSATIONS members, or private pairs when
 * that is 2. Every client sends `message:send` at a fixed rate (BENCH_RATE messages/s, default 2)
 * on its own wall-clock schedule, whatever the acks (open loop), for a 2 s warm-up (not
 * reported), then BENCH_DURATION seconds (default 15), then sending stops and up to 5 s are left
 * for the last messages to arrive (the drain).
 *
 * Delivery latency is measured per recipient: from the sender's `message:send` emit to
 * `message:created` arriving on another member's socket. Every client lives in this process, so
 * one clock (performance.now) times both ends; the send time is kept in a map keyed by clientId.
 * `message:created` also reaches the sender's own socket (it is a participant): that echo is
 * counted separately and is not a delivery.
 *
 * Modes (bench/chat-harness.ts): embedded (one node, every service, embedded stores, as
 * `npm start`), cluster (two api gateways, a users,conversations,messages,files node and a
 * notifications node on RabbitMQ from BENCH_AMQP_URL / TEST_AMQP_URL; users in PostgreSQL from
 * TEST_DATABASE_URL; half of the clients on each gateway, the members of every conversation
 * alternating between them), mongo (as embedded with MONGO_URL = TEST_MONGO_URL, a fresh
 * database), relay (the bare Socket.IO relay; the other modes are reported as ratios of it).
 * Every node runs with RATE_LIMIT=0 RATE_LIMIT_AUTH=0.
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
import { performance } from "node:perf_hooks";
import type { Socket as ClientSocket } from "socket.io-client";
import { findMaxMain } from "./chat-find-max";
import {
	type Ack,
	assertAlive,
	type BenchClient,
	closeSockets,
	describeConversations,
	MODE_NAMES,
	type ModeName,
	modeSkipReason,
	modesFromArgs,
	prepare,
	runRelay,
	sockets,
	startTarget,
	type Target,
} from "./chat-harness";
import { fmt, fmtMs, handleSignals, isInterrupted, LatencyRecorder, positiveNumberEnv, printMachine, printTable, runMain, sleep } from "./common";

// ---- settings ----

const WARMUP_SECONDS = 2;
const DRAIN_MS = 5_000;

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

// ---- the fixed-rate run ----

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

async function runMode(name: ModeName, settings: Settings): Promise<void> {
	let target: Target | null = null;
	try {
		target = await startTarget(name);
		const result = await runLoad(target.mode, target, settings);
		rows.push({ mode: result.mode, result, failure: null });
		const lost = result.expected - result.delivered;
		console.log(
			`done\n  sent ${result.sent}, acked ok ${result.ackedOk}, failed acks ${result.ackFailed}, no ack ${result.ackMissing}; ` +
				`delivered ${result.delivered}/${result.expected} (lost ${lost}), sender echoes ${result.echoes}/${result.sent}, duplicates ${result.duplicates}, disconnects ${result.disconnects}; ` +
				`${fmt(result.deliveredPerSec, 1)} deliveries/s (offered ${fmt(result.offeredPerSec, 0)}/s), p50 ${fmtMs(result.p50)} ms, p99 ${fmtMs(result.p99)} ms, ack p50 ${fmtMs(result.ackP50)} ms, drain ${fmt(result.drainMs / 1000, 1)}s`,
		);
	} catch (err) {
		if (isInterrupted()) throw err;
		const message = err instanceof Error ? err.message : String(err);
		console.error(`\n  ${name} failed: ${message}`);
		rows.push({ mode: target?.mode ?? name, result: null, failure: message.split("\n")[0] });
	} finally {
		closeSockets();
		await target?.stop();
	}
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
	const asked = modesFromArgs(process.argv, MODE_NAMES);
	console.log("Parley chat (Socket.IO) benchmark, fixed rate");
	const cpus = printMachine();
	console.log(
		`settings: ${settings.clients} clients in ${settings.conversations} conversations, ${settings.rate} msg/s per client, ` +
			`${settings.duration}s measured after ${WARMUP_SECONDS}s warm-up, drain up to ${DRAIN_MS / 1000}s`,
	);
	console.log("servers:  RATE_LIMIT=0 RATE_LIMIT_AUTH=0 BCRYPT_ROUNDS=4 LOG_LEVEL=warn; the clients run in this process, on the same cores as the servers");

	// The relay last, as before: the real system runs on a machine that is not yet warm from it.
	const order: ModeName[] = asked ? MODE_NAMES.filter(m => asked.includes(m)) : [...MODE_NAMES];
	for (const name of order) {
		const skip = await modeSkipReason(name);
		if (skip) {
			console.log(`\n${name} mode skipped: ${skip}`);
			if (asked) rows.push({ mode: name, result: null, failure: `asked for with --modes but cannot run: ${skip}` });
			continue;
		}
		await runMode(name, settings);
	}

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
	runMain(process.argv.includes("--find-max") ? findMaxMain : main);
}
