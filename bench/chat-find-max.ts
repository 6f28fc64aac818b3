/**
 * `npm run bench:chat -- --find-max [--modes relay,embedded,cluster,mongo]`: the highest message
 * rate each mode sustains, found with an OPEN-LOOP generator, plus memory and CPU figures.
 *
 * Generator: BENCH_CLIENTS sockets (default 400), one user each, in BENCH_CONVERSATIONS
 * conversations (default 200, i.e. private pairs), all in this process. A step offers a total
 * rate R: message k of the step is due at start + k/R and is sent by client k mod clients, on
 * that wall-clock timeline whatever the acks (nothing waits for an ack; a timer tick sends every
 * message already due). Delivery latency is per recipient: from the `message:send` emit to
 * `message:created` on another member's socket; the sender's own echo is not a delivery.
 *
 * A step: 1 s warm-up (sent, not counted), BENCH_STEP_SECONDS (default 5) measured, then sending
 * stops and a short drain (BENCH_STEP_DRAIN_MS, default 1000) is left. A step passes when the
 * measured deliveries that arrived by the end of the drain are >= 98 % of those expected, their
 * p99 is <= 100 ms, no ack failed and no socket dropped. A step whose backlog grows (more than
 * 2 % of its deliveries over 1 s late) stops sending early and fails. After a step the run waits
 * (up to 20 s) for every message of it to be delivered and acked, so the next step starts on an
 * idle server; what never arrives then is lost (a message the server refused, acking an error, is
 * a failed ack and owes no delivery).
 * Search: from BENCH_START_RATE (default 100 msg/s) the rate doubles until a step fails, then
 * BENCH_BISECT_STEPS (default 5) bisection steps narrow the gap between the highest passing and
 * the lowest failing rate; the highest passing rate is the mode's maximum.
 *
 * Per step and per mode it prints:
 * - server CPU per message: utime+stime from /proc/<pid>/stat of the bench's server child
 *   processes (and their descendants) from the start of the measured window to the end of the
 *   drain, divided by the messages sent in the window; in cluster mode RabbitMQ (beam.smp) and
 *   PostgreSQL (every postgres process) are added when found in /proc, in mongo mode FerretDB,
 *   each shown separately; these servers are shared, so anything else using them is counted too;
 * - whether the generator was saturated: its main thread's CPU over the window >= 90 % of a core
 *   (/proc/self/task/<pid>/stat: CPU-BOUND), or its sends leaving more than 5 ms after their due
 *   time at p99 (BEHIND); and the CPU every other process of the machine used meanwhile.
 * Per mode, before the search: the servers' RSS at rest (after start, before any client); on a
 * single-process mode (embedded, mongo, relay) the memory per idle /chat socket (BENCH_IDLE_SOCKETS,
 * default 1000, authenticated on Parley, opened in two halves: RSS delta / count, and JS heap
 * delta / count); RSS after 10,000 messages sent with at most 64 awaiting their ack (closed loop,
 * which also warms the server up; cut at 60 s on a server too slow for it, said so); the servers'
 * CPU with the clients connected and idle. The single-process modes' node runs with
 * `--inspect=127.0.0.1:0`, idle but for the moments the bench forces a full GC through it
 * (before each idle-socket reading, and to print the JS heap in use at rest and after 10,000
 * messages): without that, garbage left by the set-up makes an RSS delta meaningless.
 * After the search: latency at a fixed 1,000 msg/s for 10 s (or at the mode's maximum when that
 * is lower, said so).
 *
 * Modes (bench/chat-harness.ts): relay (the bare Socket.IO baseline, run first and always),
 * embedded, cluster, mongo; by default every mode whose servers answer (a skipped one says why).
 * The whole run takes about 2 minutes per mode on 2 cores (more for a very slow one: each step's
 * settle and the 10,000-message run are capped).
 *
 * Environment: BENCH_CLIENTS, BENCH_CONVERSATIONS, BENCH_START_RATE, BENCH_MAX_RATE (default
 * 51200), BENCH_STEP_SECONDS, BENCH_STEP_DRAIN_MS, BENCH_BISECT_STEPS, BENCH_IDLE_SOCKETS,
 * BENCH_NODE_ARGS (node flags for the Parley nodes, e.g. --cpu-prof), BENCH_KEEP=1 (keep their logs and data), BENCH_AMQP_URL /
 * TEST_AMQP_URL, TEST_DATABASE_URL, TEST_MONGO_URL.
 * Exit code 1 when: deliveries were lost or acks missing at a rate the run claims sustainable
 * (a passing step, the fixed-rate step at or below the maximum, the 10,000-message run); an ack
 * failed with anything but an overload answer (SERVICE_UNAVAILABLE, RATE_LIMITED), or any ack
 * failed at a claimed-sustainable rate; a socket dropped; a mode failed, or was asked for with
 * --modes and could not run.
 */
import crypto from "node:crypto";
import os from "node:os";
import { performance } from "node:perf_hooks";
import type { Socket as ClientSocket } from "socket.io-client";
import {
	type Ack,
	assertAlive,
	type BenchClient,
	type BenchConversation,
	connect,
	connectClients,
	createConversations,
	describeSetup,
	layout,
	MODE_NAMES,
	type ModeName,
	modeSkipReason,
	modesFromArgs,
	registerClients,
	type Shape,
	sockets,
	startTarget,
	type Target,
	closeSockets,
	mapLimit,
} from "./chat-harness";
import {
	cpuDelta,
	cpuMsOf,
	cpuSnapshot,
	fmt,
	fmtMs,
	heapAfterGc,
	INSPECT_ARG,
	inspectorUrl,
	isInterrupted,
	LatencyRecorder,
	machineBusyMs,
	positiveNumberEnv,
	printMachine,
	printTable,
	registerBenchUser,
	rssOf,
	sleep,
	withDescendants,
} from "./common";

// ---- settings ----

const START_RATE = positiveNumberEnv("BENCH_START_RATE", 100, false);
const MAX_RATE = positiveNumberEnv("BENCH_MAX_RATE", 51_200, false);
const STEP_MS = positiveNumberEnv("BENCH_STEP_SECONDS", 5, false) * 1000;
const STEP_WARMUP_MS = 1000;
const STEP_DRAIN_MS = positiveNumberEnv("BENCH_STEP_DRAIN_MS", 1000, true);
const SETTLE_MS = 20_000;
const PAUSE_MS = 500;
const BISECT_STEPS = positiveNumberEnv("BENCH_BISECT_STEPS", 5, true);
const MIN_DELIVERED_RATIO = 0.98;
const MAX_P99_MS = 100;
const BACKLOG_AGE_MS = 1000;
const BACKLOG_SHARE = 0.02;
const FIXED_RATE = 1000;
const FIXED_MS = 10_000;
const WARM_MESSAGES = 10_000;
const WARM_IN_FLIGHT = 64;
const WARM_TIMEOUT_MS = 60_000;
const IDLE_CPU_MS = 3000;
const IDLE_SOCKETS = positiveNumberEnv("BENCH_IDLE_SOCKETS", 1000, true);
/** The server ends a user's oldest socket past 20 per namespace (mixins/socket-sessions.mixin.ts). */
const IDLE_SOCKETS_PER_USER = 19;
const GEN_CPU_SATURATED = 0.9;
const GEN_LAG_P99_MS = 5;
/** Ack errors a loaded server may legitimately answer; anything else is a bug. */
const OVERLOAD_CODES = new Set(["SERVICE_UNAVAILABLE", "RATE_LIMITED"]);
const MiB = 1024 * 1024;

function readShape(): Shape {
	const shape: Shape = {
		clients: positiveNumberEnv("BENCH_CLIENTS", 400, true),
		conversations: positiveNumberEnv("BENCH_CONVERSATIONS", 200, true),
	};
	if (shape.clients < 2 * shape.conversations) {
		throw new Error(`BENCH_CLIENTS (${shape.clients}) must be at least 2 x BENCH_CONVERSATIONS (${shape.conversations}): every conversation needs two members`);
	}
	return shape;
}

// ---- the open-loop engine ----

interface StepStats {
	label: string;
	/** Messages of the step (warm-up included) and the deliveries they owe. */
	sent: number;
	/** Messages due in the measured window, and their deliveries. */
	sentMeasured: number;
	expected: number;
	/** Measured deliveries that arrived by the end of the drain, and their latencies. */
	inTime: number;
	latencies: LatencyRecorder;
	/** Measured deliveries that arrived after the drain, and those that never did. */
	late: number;
	lost: number;
	echoes: number;
	duplicates: number;
	ackOk: number;
	ackFailed: number;
	ackMissing: number;
	ackCodes: Map<string, number>;
	ackLatencies: LatencyRecorder;
	/** Emit time minus due time, per message (the generator falling behind its schedule). */
	lag: LatencyRecorder;
	/** Messages not yet acked and fully delivered. */
	outstanding: number;
	/** In send order, for the backlog check and the final count. */
	messages: { id: string; msg: Msg }[];
	head: number;
	drainClosed: boolean;
	onAck: (() => void) | null;
}

interface Msg {
	step: StepStats;
	sender: number;
	at: number;
	measured: boolean;
	recipients: number;
	received: number[];
	acked: boolean;
	/** Acked with an error: the server refused it, so no delivery is owed (it is a failed ack, not a loss). */
	refused: boolean;
	echoed: boolean;
	done: boolean;
}

function newStep(label: string): StepStats {
	return {
		label,
		sent: 0,
		sentMeasured: 0,
		expected: 0,
		inTime: 0,
		latencies: new LatencyRecorder(1 << 14),
		late: 0,
		lost: 0,
		echoes: 0,
		duplicates: 0,
		ackOk: 0,
		ackFailed: 0,
		ackMissing: 0,
		ackCodes: new Map(),
		ackLatencies: new LatencyRecorder(1 << 14),
		lag: new LatencyRecorder(1 << 14),
		outstanding: 0,
		messages: [],
		head: 0,
		drainClosed: false,
		onAck: null,
	};
}

/** CPU of the server processes (ours and the external ones), by label. */
interface CpuGroups {
	groups: { label: string; pids: number[]; external: boolean }[];
}

function cpuGroups(target: Target): CpuGroups {
	const roots = target.watched.map(n => n.child.pid).filter((p): p is number => typeof p === "number");
	const groups: CpuGroups["groups"] = [{ label: "nodes", pids: withDescendants(roots), external: false }];
	for (const ext of target.external) groups.push({ label: ext.label, pids: ext.pids(), external: true });
	return { groups };
}

function snapshotGroups(g: CpuGroups): Map<number, number>[] {
	return g.groups.map(group => cpuSnapshot(group.pids));
}

interface StepResult {
	label: string;
	rate: number;
	sentMeasured: number;
	measuredMs: number;
	expected: number;
	inTime: number;
	late: number;
	lost: number;
	ratio: number;
	p50: number;
	p99: number;
	ackP50: number;
	ackOk: number;
	ackFailed: number;
	ackMissing: number;
	ackCodes: Map<string, number>;
	duplicates: number;
	disconnects: number;
	lagP99: number;
	lagMax: number;
	/** Generator main thread CPU over the window, fraction of one core; and the whole process. */
	genCpu: number;
	genCpuProcess: number;
	/** Server CPU ms per measured message, by group label ("nodes" first). */
	cpuPerMsg: { label: string; ms: number; external: boolean; found: boolean }[];
	/** Cores busy over the window (measured + drain): the server processes, and every other process of the machine but the generator. */
	serverCores: number;
	otherCores: number;
	aborted: string | null;
	settled: boolean;
	pass: boolean;
	why: string[];
}

function generatorSaturated(r: StepResult): boolean {
	return r.genCpu >= GEN_CPU_SATURATED || r.lagP99 > GEN_LAG_P99_MS;
}

/** "CPU-BOUND" (its main thread near a full core) and/or "BEHIND" (sends late against the schedule). */
function saturation(r: StepResult): string {
	const why: string[] = [];
	if (r.genCpu >= GEN_CPU_SATURATED) why.push("CPU-BOUND");
	if (r.lagP99 > GEN_LAG_P99_MS) why.push("BEHIND");
	return why.length > 0 ? `SATURATED (${why.join(", ")})` : "no";
}

class Engine {
	private readonly prefix = `fm-${crypto.randomBytes(3).toString("hex")}-`;
	private seq = 0;
	private readonly live = new Map<string, Msg>();
	disconnects = 0;

	constructor(
		private readonly target: Target,
		private readonly clients: BenchClient[],
		private readonly conversations: BenchConversation[],
	) {
		for (const client of clients) {
			const socket = client.socket as ClientSocket;
			socket.on("disconnect", reason => {
				if (reason === "io client disconnect") return; // closed by this harness
				this.disconnects++;
				console.error(`  client ${client.index} disconnected: ${reason}`);
			});
			socket.on("message:created", (payload: { clientId?: unknown; client_id?: unknown } | null) => this.onCreated(client.index, payload));
		}
	}

	private onCreated(index: number, payload: { clientId?: unknown; client_id?: unknown } | null): void {
		const now = performance.now();
		const id = payload?.clientId ?? payload?.client_id;
		if (typeof id !== "string" || !id.startsWith(this.prefix)) return;
		const msg = this.live.get(id);
		if (!msg) return; // settled and forgotten
		const st = msg.step;
		if (index === msg.sender) {
			if (msg.echoed) st.duplicates++;
			else st.echoes++;
			msg.echoed = true;
			return;
		}
		if (msg.received.includes(index)) {
			st.duplicates++;
			return;
		}
		msg.received.push(index);
		if (msg.measured) {
			if (st.drainClosed) st.late++;
			else {
				st.inTime++;
				st.latencies.add(now - msg.at);
			}
		}
		this.maybeDone(id, msg);
	}

	private maybeDone(id: string, msg: Msg): void {
		if (msg.done || !msg.acked || (!msg.refused && msg.received.length < msg.recipients)) return;
		msg.done = true;
		msg.step.outstanding--;
		this.live.delete(id);
	}

	private send(client: BenchClient, st: StepStats, measured: boolean, due: number | null): void {
		const conv = this.conversations[client.conversation];
		const id = `${this.prefix}${this.seq++}`;
		const at = performance.now();
		if (due !== null) st.lag.add(at - due);
		const msg: Msg = { step: st, sender: client.index, at, measured, recipients: conv.members.length - 1, received: [], acked: false, refused: false, echoed: false, done: false };
		this.live.set(id, msg);
		st.messages.push({ id, msg });
		st.sent++;
		st.outstanding++;
		if (measured) {
			st.sentMeasured++;
			st.expected += msg.recipients;
		}
		(client.socket as ClientSocket).emit("message:send", { conversationId: conv.id, content: `bench message ${id}`, clientId: id }, (ack: Ack) => {
			if (msg.acked) return;
			msg.acked = true;
			if (ack?.ok) {
				st.ackOk++;
				st.ackLatencies.add(performance.now() - at);
			} else {
				msg.refused = true;
				st.ackFailed++;
				const code = ack?.error?.code ?? "NO_CODE";
				st.ackCodes.set(code, (st.ackCodes.get(code) ?? 0) + 1);
				if (st.ackFailed <= 3) console.error(`  ${st.label}: client ${client.index}: message:send acked ${JSON.stringify(ack).slice(0, 300)}`);
			}
			this.maybeDone(id, msg);
			st.onAck?.();
		});
	}

	/** Deliveries owed by messages sent more than BACKLOG_AGE_MS ago. */
	private overdue(st: StepStats, now: number): number {
		while (st.head < st.messages.length && st.messages[st.head].msg.done) st.head++;
		let owed = 0;
		for (let i = st.head; i < st.messages.length; i++) {
			const { msg } = st.messages[i];
			if (now - msg.at <= BACKLOG_AGE_MS) break;
			if (!msg.done) owed += msg.recipients - msg.received.length;
		}
		return owed;
	}

	/** Waits until every message of `st` is acked and delivered (or `limitMs`); counts what is missing and forgets the step. */
	private async settle(st: StepStats, limitMs: number): Promise<boolean> {
		const start = performance.now();
		while (st.outstanding > 0 && performance.now() - start < limitMs) {
			await sleep(50);
			assertAlive(this.target.watched);
		}
		for (const { id, msg } of st.messages) {
			if (msg.done) continue;
			if (!msg.acked) st.ackMissing++;
			if (msg.measured && !msg.refused) st.lost += msg.recipients - msg.received.length;
			this.live.delete(id);
		}
		const settled = st.outstanding === 0;
		st.messages = [];
		return settled;
	}

	/**
	 * One open-loop step at `rate` msg/s: STEP_WARMUP_MS not counted, `measureMs` measured, the
	 * drain, then the settle. `abortOnBacklog` stops sending once the backlog shows it fails.
	 */
	async step(label: string, rate: number, measureMs: number, abortOnBacklog: boolean): Promise<StepResult> {
		const st = newStep(label);
		const cpu = cpuGroups(this.target);
		const disconnectsBefore = this.disconnects;
		const n = this.clients.length;
		const interval = 1000 / rate;
		const start = performance.now() + 20;
		const measureStart = start + STEP_WARMUP_MS;
		const end = measureStart + measureMs;
		const total = Math.ceil((end - start) / interval);
		let k = 0;
		let aborted: string | null = null;
		let serverBefore: Map<number, number>[] = [];
		let genBefore = { main: 0, all: 0 };
		let machineBefore = 0;
		let measuring = false;
		const genNow = () => ({ main: cpuMsOf(process.pid, process.pid) ?? 0, all: cpuMsOf(process.pid) ?? 0 });

		const backlog = abortOnBacklog
			? setInterval(() => {
					const owed = this.overdue(st, performance.now());
					const limit = Math.max(20, BACKLOG_SHARE * st.sent);
					if (owed > limit && !aborted) aborted = `backlog: ${owed} deliveries over ${BACKLOG_AGE_MS} ms late after ${st.sent} messages`;
				}, 250)
			: null;

		await new Promise<void>(resolve => {
			const tick = () => {
				const now = performance.now();
				while (k < total && !aborted) {
					const due = start + k * interval;
					if (due > now) break;
					const measured = due >= measureStart;
					if (measured && !measuring) {
						measuring = true;
						serverBefore = snapshotGroups(cpu);
						genBefore = genNow();
						machineBefore = machineBusyMs();
					}
					this.send(this.clients[k % n], st, measured, due);
					k++;
				}
				if (k >= total || aborted) return resolve();
				setTimeout(tick, Math.max(0, start + k * interval - performance.now()));
			};
			setTimeout(tick, Math.max(0, start - performance.now()));
		});
		if (backlog) clearInterval(backlog);
		const sendEnd = performance.now();
		const genAfter = genNow();
		const measuredMs = measuring ? Math.min(sendEnd, end) - measureStart : 0;
		if (!measuring) {
			serverBefore = snapshotGroups(cpu);
			genBefore = genAfter;
			machineBefore = machineBusyMs();
		}
		const windowStart = measuring ? measureStart : sendEnd;

		// The drain: measured deliveries arriving by its end count.
		while (st.inTime < st.expected && performance.now() - sendEnd < STEP_DRAIN_MS) await sleep(10);
		st.drainClosed = true;
		const serverAfter = snapshotGroups(cpu);
		const genAtDrain = genNow();
		const machineAfter = machineBusyMs();
		const windowMs = performance.now() - windowStart;
		const settled = await this.settle(st, SETTLE_MS);
		if (this.disconnects > 0) throw new Error(`${this.disconnects} client sockets dropped; the clients cannot go on`);
		await sleep(PAUSE_MS);

		const ratio = st.expected > 0 ? st.inTime / st.expected : 0;
		const p99 = st.latencies.percentile(99);
		const why: string[] = [];
		if (aborted) why.push(`stopped early (${aborted})`);
		if (ratio < MIN_DELIVERED_RATIO) why.push(`delivered ${fmt(ratio, 3)} < ${MIN_DELIVERED_RATIO}`);
		if (!(p99 <= MAX_P99_MS)) why.push(`p99 ${fmtMs(p99)} ms > ${MAX_P99_MS} ms`);
		if (st.ackFailed > 0) why.push(`${st.ackFailed} failed acks (${codes(st.ackCodes)})`);
		const disconnects = this.disconnects - disconnectsBefore;
		if (disconnects > 0) why.push(`${disconnects} disconnects`);
		const serverMs = cpu.groups.map((_, i) => cpuDelta(serverBefore[i], serverAfter[i]));
		const perMsg = (i: number) => (st.sentMeasured > 0 ? serverMs[i] / st.sentMeasured : Number.NaN);
		const othersMs = machineAfter - machineBefore - serverMs.reduce((a, b) => a + b, 0) - (genAtDrain.all - genBefore.all);
		return {
			label,
			rate,
			sentMeasured: st.sentMeasured,
			measuredMs,
			expected: st.expected,
			inTime: st.inTime,
			late: st.late,
			lost: st.lost,
			ratio,
			p50: st.latencies.percentile(50),
			p99,
			ackP50: st.ackLatencies.percentile(50),
			ackOk: st.ackOk,
			ackFailed: st.ackFailed,
			ackMissing: st.ackMissing,
			ackCodes: st.ackCodes,
			duplicates: st.duplicates,
			disconnects,
			lagP99: st.lag.percentile(99),
			lagMax: st.lag.percentile(100),
			genCpu: measuredMs > 0 ? (genAfter.main - genBefore.main) / measuredMs : Number.NaN,
			genCpuProcess: measuredMs > 0 ? (genAfter.all - genBefore.all) / measuredMs : Number.NaN,
			cpuPerMsg: cpu.groups.map((g, i) => ({ label: g.label, ms: perMsg(i), external: g.external, found: g.pids.length > 0 })),
			serverCores: serverMs.reduce((a, b) => a + b, 0) / windowMs,
			otherCores: Math.max(0, othersMs / windowMs),
			aborted,
			settled,
			pass: why.length === 0,
			why,
		};
	}

	/** `count` messages with at most `inFlight` awaiting their ack (closed loop), then settled. */
	async closedLoop(label: string, count: number, inFlight: number): Promise<{ st: StepStats; ms: number; settled: boolean; timedOut: boolean }> {
		const st = newStep(label);
		const n = this.clients.length;
		let k = 0;
		const started = performance.now();
		let resolveAll: () => void = () => undefined;
		const allSent = new Promise<void>(resolve => (resolveAll = resolve));
		const next = () => {
			if (k >= count) return resolveAll();
			this.send(this.clients[k % n], st, true, null);
			k++;
		};
		st.onAck = () => setImmediate(next);
		for (let i = 0; i < Math.min(inFlight, count); i++) next();
		let timer: NodeJS.Timeout | undefined;
		await Promise.race([allSent, new Promise<void>(resolve => (timer = setTimeout(resolve, WARM_TIMEOUT_MS)))]);
		clearTimeout(timer);
		st.onAck = null;
		// Past the time limit nothing more is sent; what is in flight gets SETTLE_MS to finish.
		const stopped = performance.now();
		while (st.outstanding > 0 && performance.now() - stopped < SETTLE_MS) {
			await sleep(20);
			assertAlive(this.target.watched);
		}
		const ms = performance.now() - started;
		st.drainClosed = true;
		const settled = await this.settle(st, 0);
		if (this.disconnects > 0) throw new Error(`${this.disconnects} client sockets dropped; the clients cannot go on`);
		return { st, ms, settled, timedOut: k < count };
	}
}

function codes(m: Map<string, number>): string {
	return [...m].map(([code, count]) => `${code} x${count}`).join(", ");
}

// ---- memory ----

function nodeRss(target: Target): { name: string; bytes: number }[] {
	return target.watched.map(node => {
		const pids = typeof node.child.pid === "number" ? withDescendants([node.child.pid]) : [];
		return { name: node.name, bytes: pids.reduce((sum, pid) => sum + (rssOf(pid) ?? 0), 0) };
	});
}

function describeIdle(i: IdleResult): string {
	const rss = perSocket(i.rss, i.count);
	const heap = perSocket(i.heap, i.count);
	const mib = (v: [number, number, number]) => v.map(x => fmt(x / MiB, 1)).join(" -> ");
	return (
		`RSS ${mib(i.rss)} MiB = ${fmt(rss.all, 1)} KiB per socket (halves ${fmt(rss.first, 1)}, ${fmt(rss.second, 1)}); ` +
		`JS heap after GC ${mib(i.heap)} MiB = ${fmt(heap.all, 1)} KiB per socket (halves ${fmt(heap.first, 1)}, ${fmt(heap.second, 1)})`
	);
}

function heapNote(heap: number): string {
	return Number.isFinite(heap) ? ` (JS heap after a forced GC ${fmt(heap / MiB, 1)} MiB)` : "";
}

function describeRss(list: { name: string; bytes: number }[]): string {
	return list.length === 1 ? `${fmt(list[0].bytes / MiB, 1)} MiB` : list.map(r => `${r.name} ${fmt(r.bytes / MiB, 1)}`).join(", ") + ` MiB (total ${fmt(list.reduce((s, r) => s + r.bytes, 0) / MiB, 1)})`;
}

interface IdleResult {
	count: number;
	/** RSS and JS heap (after a forced GC; NaN without the inspector) before, after the first half, after all. */
	rss: [number, number, number];
	heap: [number, number, number];
}

/** Per socket, KiB: over all of them, and for each half. */
function perSocket(values: [number, number, number], count: number): { all: number; first: number; second: number } {
	const half = Math.floor(count / 2);
	return { all: (values[2] - values[0]) / count / 1024, first: (values[1] - values[0]) / half / 1024, second: (values[2] - values[1]) / (count - half) / 1024 };
}

/** A forced GC in the single server process, then its JS heap in use (NaN without its inspector). */
async function heapOf(inspector: string | null): Promise<number> {
	if (!inspector) return Number.NaN;
	try {
		return await heapAfterGc(inspector);
	} catch (err) {
		console.error(`  reading the heap through the inspector failed: ${(err as Error).message}`);
		return Number.NaN;
	}
}

/**
 * RSS and JS heap of the (single) server before, between and after opening two halves of
 * IDLE_SOCKETS idle /chat sockets (2 s after each half, a full GC forced through the inspector
 * before each reading, so garbage from the set-up neither hides nor inflates the sockets); they
 * are closed again.
 */
async function idleSocketMemory(target: Target, clients: BenchClient[], inspector: string | null): Promise<IdleResult> {
	const tokens = clients.map(c => c.token);
	if (target.kind === "parley") {
		// At most IDLE_SOCKETS_PER_USER sockets per user: more users when there are too few.
		const wanted = Math.ceil(IDLE_SOCKETS / IDLE_SOCKETS_PER_USER);
		while (tokens.length < wanted) tokens.push((await registerBenchUser(target.bases[0])).token);
	}
	const rssNow = () => nodeRss(target).reduce((s, r) => s + r.bytes, 0);
	const half = Math.floor(IDLE_SOCKETS / 2);
	const idle: ClientSocket[] = [];
	const reading = async (): Promise<[number, number]> => {
		const heap = await heapOf(inspector);
		await sleep(500);
		return [rssNow(), heap];
	};
	const open = async (from: number, to: number) => {
		const opened = await mapLimit(
			Array.from({ length: to - from }, (_, i) => from + i),
			20,
			i => connect(target.bases[0], tokens[i % tokens.length]),
		);
		idle.push(...opened);
		await sleep(2000);
		assertAlive(target.watched);
		const connected = idle.filter(s => s.connected).length;
		if (connected !== to) throw new Error(`only ${connected} of ${to} idle sockets still connected after 2 s`);
		return reading();
	};
	await sleep(1000);
	const r0 = await reading();
	const r1 = await open(0, half);
	const r2 = await open(half, IDLE_SOCKETS);
	for (const s of idle) {
		s.disconnect();
		sockets.delete(s);
	}
	await sleep(1000);
	return { count: IDLE_SOCKETS, rss: [r0[0], r1[0], r2[0]], heap: [r0[1], r1[1], r2[1]] };
}

// ---- one mode ----

interface ModeReport {
	name: ModeName;
	mode: string;
	rssRest: { name: string; bytes: number }[] | null;
	rss10k: { name: string; bytes: number }[] | null;
	/** JS heap in use after a forced GC (single-process modes; NaN otherwise). */
	heapRest: number;
	heap10k: number;
	warm: { sent: number; ms: number; p50: number; p99: number; lost: number; ackFailed: number; ackMissing: number } | null;
	idle: IdleResult | null;
	steps: StepResult[];
	max: StepResult | null;
	failAbove: StepResult | null;
	fixed: StepResult | null;
	failure: string | null;
	/** A CPU group that was looked for and not found. */
	externalNotFound: string[];
	/** Server CPU with the clients connected and nothing sent, in cores, by group. */
	idleCores: { label: string; cores: number }[];
}

function stepLine(r: StepResult): string {
	const cpu = r.cpuPerMsg.map(c => (c.external ? `${c.label} ${c.found ? fmt(c.ms, 3) : "not found"}` : fmt(c.ms, 3))).join(" + ");
	const gen = `generator ${fmt(r.genCpu * 100, 0)}% of a core (process ${fmt(r.genCpuProcess * 100, 0)}%), lag p99 ${fmtMs(r.lagP99)} ms max ${fmtMs(r.lagMax)} ms${generatorSaturated(r) ? ` ${saturation(r)}` : ""}`;
	const box = `servers ${fmt(r.serverCores, 2)} cores, other processes ${fmt(r.otherCores, 2)} cores`;
	return (
		`  ${r.label.padEnd(8)} ${String(r.rate).padStart(6)} msg/s: sent ${r.sentMeasured} in ${fmt(r.measuredMs / 1000, 1)}s, delivered ${r.inTime}/${r.expected} (${fmt(r.ratio, 3)}), late ${r.late}, lost ${r.lost}, ` +
		`p50 ${fmtMs(r.p50)} p99 ${fmtMs(r.p99)} ms, ack p50 ${fmtMs(r.ackP50)} ms, failed acks ${r.ackFailed}, no ack ${r.ackMissing}${r.settled ? "" : " (not settled)"}; ` +
		`server CPU ${cpu} ms/msg; ${gen}; ${box} -> ${r.pass ? "pass" : `FAIL: ${r.why.join("; ")}`}`
	);
}

async function runMode(name: ModeName, shape: Shape): Promise<ModeReport> {
	const report: ModeReport = { name, mode: name, rssRest: null, rss10k: null, warm: null, idle: null, steps: [], max: null, failAbove: null, fixed: null, failure: null, externalNotFound: [], idleCores: [], heapRest: Number.NaN, heap10k: Number.NaN };
	const target = await startTarget(name, true);
	report.mode = target.mode;
	try {
		await sleep(1000);
		report.rssRest = nodeRss(target);
		const inspector = target.watched.length === 1 ? await inspectorUrl(target.watched[0]) : null;
		report.heapRest = await heapOf(inspector);
		console.log(`  RSS at rest (after start, before any client): ${describeRss(report.rssRest)}${heapNote(report.heapRest)}`);
		const started = Date.now();
		const { clients, conversations } = layout(shape, target.bases.length);
		await registerClients(target, clients);
		if (target.watched.length === 1) {
			report.idle = await idleSocketMemory(target, clients, inspector);
			const i = report.idle;
			console.log(`  ${i.count} idle ${target.kind === "parley" ? "authenticated " : ""}/chat sockets: ${describeIdle(i)}`);
		}
		await connectClients(target, clients);
		await createConversations(target, clients, conversations);
		console.log(`  ${describeSetup(target, clients, conversations, started)}`);
		const engine = new Engine(target, clients, conversations);

		// 10,000 messages, closed loop: warms the server up, then its RSS.
		process.stdout.write(`  ${WARM_MESSAGES} messages, at most ${WARM_IN_FLIGHT} awaiting their ack... `);
		const warm = await engine.closedLoop("10k", WARM_MESSAGES, WARM_IN_FLIGHT);
		report.warm = {
			sent: warm.st.sent,
			ms: warm.ms,
			p50: warm.st.latencies.percentile(50),
			p99: warm.st.latencies.percentile(99),
			lost: warm.st.lost,
			ackFailed: warm.st.ackFailed,
			ackMissing: warm.st.ackMissing,
		};
		await sleep(1000);
		report.rss10k = nodeRss(target);
		report.heap10k = await heapOf(inspector);
		if (warm.timedOut) console.log(`\n  only ${warm.st.sent} of ${WARM_MESSAGES} messages sent within ${WARM_TIMEOUT_MS / 1000}s: the server is that slow`);
		console.log(
			`${warm.timedOut ? "  " : ""}${warm.st.sent} sent in ${fmt(warm.ms / 1000, 1)}s (${fmt((warm.st.sent * 1000) / warm.ms, 0)} msg/s), delivered ${warm.st.inTime}/${warm.st.expected}, lost ${warm.st.lost}, ` +
				`failed acks ${warm.st.ackFailed}, no ack ${warm.st.ackMissing}, p50 ${fmtMs(report.warm.p50)} p99 ${fmtMs(report.warm.p99)} ms; RSS after: ${describeRss(report.rss10k)}${heapNote(report.heap10k)}`,
		);
		for (const ext of target.external) if (ext.pids().length === 0) report.externalNotFound.push(ext.label);

		// What the servers burn with the clients connected and nothing sent: the floor under ms/msg at low rates.
		const idleCpu = cpuGroups(target);
		const idleBefore = snapshotGroups(idleCpu);
		const idleStart = performance.now();
		await sleep(IDLE_CPU_MS);
		const idleAfter = snapshotGroups(idleCpu);
		const idleWall = performance.now() - idleStart;
		report.idleCores = idleCpu.groups.map((g, i) => ({ label: g.label, cores: cpuDelta(idleBefore[i], idleAfter[i]) / idleWall }));
		console.log(`  server CPU with the clients connected and idle (${IDLE_CPU_MS / 1000}s): ${report.idleCores.map(c => `${c.label} ${fmt(c.cores, 3)}`).join(" + ")} cores`);

		// The search: doubling, then bisection.
		console.log(`  search: open loop, ${STEP_WARMUP_MS / 1000}s warm-up + ${STEP_MS / 1000}s measured + ${STEP_DRAIN_MS} ms drain per step; pass = delivered >= ${MIN_DELIVERED_RATIO}, p99 <= ${MAX_P99_MS} ms, no failed ack`);
		const run = async (label: string, rate: number) => {
			const r = await engine.step(label, rate, STEP_MS, true);
			report.steps.push(r);
			console.log(stepLine(r));
			return r;
		};
		let lo: StepResult | null = null;
		let hi: StepResult | null = null;
		for (let rate = START_RATE; rate <= MAX_RATE; rate *= 2) {
			const r = await run("double", Math.round(rate));
			if (!r.pass) {
				hi = r;
				break;
			}
			lo = r;
		}
		// Nothing passed: halve until something does.
		for (let rate = (hi?.rate ?? 0) / 2; !lo && rate >= 5; rate /= 2) {
			const r = await run("halve", Math.round(rate));
			if (r.pass) lo = r;
			else hi = r;
		}
		for (let i = 0; i < BISECT_STEPS && lo && hi && hi.rate - lo.rate > Math.max(2, lo.rate * 0.03); i++) {
			const r = await run("bisect", Math.round((lo.rate + hi.rate) / 2));
			if (r.pass) lo = r;
			else hi = r;
		}
		report.max = lo;
		report.failAbove = hi;

		// Latency at a fixed 1,000 msg/s (or the maximum when lower).
		const fixedRate = lo ? Math.min(FIXED_RATE, lo.rate) : 0;
		if (fixedRate > 0) {
			report.fixed = await engine.step("fixed", fixedRate, FIXED_MS, false);
			console.log(stepLine(report.fixed));
		}
	} catch (err) {
		if (isInterrupted()) throw err;
		const message = err instanceof Error ? err.message : String(err);
		console.error(`\n  ${name} failed: ${message}`);
		report.failure = message.split("\n")[0];
	} finally {
		closeSockets();
		await target.stop();
	}
	return report;
}

// ---- output ----

function cpuSummary(r: StepResult): string {
	const nodes = r.cpuPerMsg.find(c => !c.external);
	const ext = r.cpuPerMsg.filter(c => c.external && c.found);
	if (ext.length === 0) return fmt(nodes?.ms ?? Number.NaN, 3);
	const total = r.cpuPerMsg.filter(c => c.found).reduce((s, c) => s + c.ms, 0);
	return `${fmt(total, 3)} (nodes ${fmt(nodes?.ms ?? Number.NaN, 3)}${ext.map(c => ` + ${c.label.split(" ")[0]} ${fmt(c.ms, 3)}`).join("")})`;
}

function generatorSummary(r: StepResult | null): string {
	if (!r) return "-";
	return `${saturation(r)}: ${fmt(r.genCpu * 100, 0)}% of a core, lag p99 ${fmtMs(r.lagP99)} ms; others ${fmt(r.otherCores, 2)} cores`;
}

function printSummary(reports: ModeReport[]): void {
	const relay = reports.find(r => r.name === "relay")?.max ?? null;
	const header = ["mode", "max msg/s", "vs relay", "p50 ms", "p99 ms", "server CPU ms/msg", "generator at max", "first failing step", "generator there"];
	const body = reports.map(r => {
		if (r.failure && !r.max) return [r.mode, "-", "-", "-", "-", "-", "-", `failed: ${r.failure.slice(0, 60)}`, "-"];
		const m = r.max;
		const ratio = r.name === "relay" ? "1 (baseline)" : m && relay ? `${fmt(m.rate / relay.rate, 2)}x` : "-";
		const fail = r.failAbove ? `${r.failAbove.rate}: ${r.failAbove.why.join("; ").slice(0, 70)}` : `none up to ${MAX_RATE}`;
		return [r.mode, m ? String(m.rate) : "none", ratio, m ? fmtMs(m.p50) : "-", m ? fmtMs(m.p99) : "-", m ? cpuSummary(m) : "-", generatorSummary(m), fail, generatorSummary(r.failAbove)];
	});
	printTable(header, body, new Set([1, 3, 4]));

	console.log("");
	const fixedHeader = ["mode", "fixed rate", "p50 ms", "p99 ms", "delivered", "lost", "server CPU ms/msg", "generator"];
	const fixedBody = reports
		.filter(r => r.fixed)
		.map(r => {
			const f = r.fixed as StepResult;
			const rateNote = f.rate === FIXED_RATE ? `${f.rate} msg/s` : `${f.rate} msg/s (its max; ${FIXED_RATE} not sustained)`;
			return [r.mode, rateNote, fmtMs(f.p50), fmtMs(f.p99), `${f.inTime}/${f.expected}`, String(f.lost), cpuSummary(f), generatorSummary(f)];
		});
	if (fixedBody.length > 0) printTable(fixedHeader, fixedBody, new Set([2, 3, 5]));

	console.log("");
	for (const r of reports) {
		const parts: string[] = [];
		if (r.rssRest) parts.push(`RSS at rest ${describeRss(r.rssRest)}${heapNote(r.heapRest)}`);
		if (r.rss10k && r.warm) parts.push(`after ${r.warm.sent} messages ${describeRss(r.rss10k)}${heapNote(r.heap10k)} (closed loop: ${fmt((r.warm.sent * 1000) / r.warm.ms, 0)} msg/s, p50 ${fmtMs(r.warm.p50)} p99 ${fmtMs(r.warm.p99)} ms)`);
		if (r.idle) parts.push(`${r.idle.count} idle /chat sockets: ${describeIdle(r.idle)}`);
		if (parts.length > 0) console.log(`memory ${r.mode}: ${parts.join("; ")}`);
		if (r.idleCores.length > 0) console.log(`idle CPU ${r.mode} (clients connected, nothing sent): ${r.idleCores.map(c => `${c.label} ${fmt(c.cores, 3)}`).join(" + ")} cores`);
	}
	const relayIdle = reports.find(r => r.name === "relay")?.idle;
	const parleyIdle = reports.find(r => r.name === "embedded")?.idle;
	if (relayIdle && parleyIdle) {
		const ratio = (v: (i: IdleResult) => [number, number, number]) => perSocket(v(parleyIdle), parleyIdle.count).all / perSocket(v(relayIdle), relayIdle.count).all;
		console.log(`memory per idle /chat socket, embedded vs relay: RSS ${fmt(ratio(i => i.rss), 1)}x, JS heap ${fmt(ratio(i => i.heap), 1)}x`);
	}
}

// ---- main ----

export async function findMaxMain(): Promise<void> {
	const shape = readShape();
	const asked = modesFromArgs(process.argv, MODE_NAMES);
	console.log("Parley chat (Socket.IO) benchmark: highest sustainable rate, open loop");
	const cpus = printMachine();
	console.log(`clients:  ${shape.clients} sockets in ${shape.conversations} conversations (BENCH_CLIENTS, BENCH_CONVERSATIONS), all in this process (pid ${process.pid}), on the same cores as the servers`);
	console.log(
		`steps:    from ${START_RATE} msg/s doubling, then ${BISECT_STEPS} bisection steps; ${STEP_WARMUP_MS / 1000}s warm-up + ${STEP_MS / 1000}s measured + ${STEP_DRAIN_MS} ms drain; ` +
			`pass = delivered/offered >= ${MIN_DELIVERED_RATIO} and delivery p99 <= ${MAX_P99_MS} ms, no failed ack`,
	);
	console.log("servers:  RATE_LIMIT=0 RATE_LIMIT_AUTH=0 BCRYPT_ROUNDS=4 LOG_LEVEL=warn");

	// The relay first: the baseline of every ratio, and the generator's own ceiling.
	const order: ModeName[] = (["relay", "embedded", "cluster", "mongo"] as ModeName[]).filter(m => !asked || asked.includes(m));
	if (asked && !asked.includes("relay")) {
		order.unshift("relay");
		console.log("modes:    relay added: the ratios need it");
	}
	const reports: ModeReport[] = [];
	const problems: string[] = [];
	for (const name of order) {
		const skip = await modeSkipReason(name);
		if (skip) {
			console.log(`\n${name} mode skipped: ${skip}`);
			if (asked?.includes(name)) problems.push(`${name}: asked for with --modes but cannot run: ${skip}`);
			continue;
		}
		const modeStarted = Date.now();
		console.log(`\n(load average before ${name}: ${os.loadavg().map(l => fmt(l, 2)).join(" ")})`);
		const report = await runMode(name, shape);
		console.log(`  (${name}: ${fmt((Date.now() - modeStarted) / 1000, 0)}s)`);
		reports.push(report);
	}

	console.log(`\nResults (${cpus.length} cores shared by the generator and the servers, node ${process.version}):\n`);
	printSummary(reports);
	console.log(
		`\nmax msg/s: highest offered total rate (open loop) with >= ${MIN_DELIVERED_RATIO * 100}% of the deliveries in by ${STEP_DRAIN_MS} ms after sending stopped and p99 <= ${MAX_P99_MS} ms; p50/p99 at that rate, emit -> message:created on the other member's socket.` +
			"\nserver CPU ms/msg: utime+stime (/proc/<pid>/stat) of the server processes over the measured window and drain, per message sent; cluster: + RabbitMQ (beam.smp) and PostgreSQL (all postgres processes), mongo: + FerretDB, when found in /proc (shared servers: anything else using them counts too)." +
			`\ngenerator: SATURATED when CPU-BOUND (its main thread >= ${GEN_CPU_SATURATED * 100}% of a core over the window) or BEHIND (sends left more than ${GEN_LAG_P99_MS} ms after their due time at p99); a SATURATED failing step means the limit found may be the generator's, not the server's. BEHIND without CPU-BOUND means this process did not get the CPU: the servers or other processes had it. "others": CPU of every other process of the machine over the window (other people's work on a shared box makes a step noisy).` +
			`\nmemory: RSS (/proc/<pid>/status VmRSS) of the server processes; JS heap: in use after a full GC forced through the node's inspector (single-process modes run with ${INSPECT_ARG}); idle socket = delta / sockets (${IDLE_SOCKETS_PER_USER} at most per user), each reading after a forced GC.`,
	);
	for (const r of reports) {
		if (r.externalNotFound.length > 0) console.log(`${r.mode}: not found in /proc, so not included in its CPU: ${r.externalNotFound.join(", ")}`);
	}

	for (const r of reports) {
		if (r.failure) problems.push(`${r.mode}: ${r.failure}`);
		if (r.warm && (r.warm.lost > 0 || r.warm.ackFailed > 0 || r.warm.ackMissing > 0)) {
			problems.push(`${r.mode}: ${WARM_MESSAGES} messages (closed loop): lost ${r.warm.lost}, failed acks ${r.warm.ackFailed}, no ack ${r.warm.ackMissing}`);
		}
		const sustainable = r.steps.filter(s => s.pass || (r.max && s.rate <= r.max.rate));
		if (r.fixed && r.max && r.fixed.rate <= r.max.rate) sustainable.push(r.fixed);
		for (const s of sustainable) {
			if (s.lost > 0 || s.ackMissing > 0 || s.ackFailed > 0) problems.push(`${r.mode}: at ${s.rate} msg/s (${s.label}), claimed sustainable: lost ${s.lost}, failed acks ${s.ackFailed} (${codes(s.ackCodes)}), no ack ${s.ackMissing}`);
		}
		for (const s of [...r.steps, ...(r.fixed ? [r.fixed] : [])]) {
			const odd = [...s.ackCodes].filter(([code]) => !OVERLOAD_CODES.has(code));
			if (odd.length > 0) problems.push(`${r.mode}: at ${s.rate} msg/s (${s.label}): acks failed with ${odd.map(([c, n]) => `${c} x${n}`).join(", ")}`);
			if (s.disconnects > 0) problems.push(`${r.mode}: at ${s.rate} msg/s: ${s.disconnects} disconnects`);
		}
	}
	if (problems.length > 0) throw new Error([...new Set(problems)].join("; "));
}
