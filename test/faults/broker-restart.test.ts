/**
 * Fault: RabbitMQ stops for about 8 s (`rabbitmqctl stop_app`, then `start_app`, always restored
 * in a `finally`) while two users on different gateways exchange messages. Nodes are separate
 * processes over RabbitMQ, as an operator runs them.
 *
 * A burst of sends right before the stop leaves the notifications node handling events when its
 * channel closes (this used to end that process: @moleculer/channels acknowledged on the closed
 * channel, and the rejection was not caught).
 *
 * A careful client retries a send with the same clientId until it is acknowledged, and catches up
 * with `message:list { after }` (what the web client does). Then every message is there exactly
 * once, `seq` has no gap, each message makes exactly one notification, and no node died or needed
 * a restart: the transporter, @moleculer/channels and the durable publisher reconnect by themselves.
 * Prints the outage, the recovery time and the retries.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { after, before, describe, it } from "node:test";
import type { Socket } from "socket.io-client";
import { emitWithin, type FaultCluster, faultCluster, faultSocket, withNodeLogs } from "../helpers/fault-cluster";
import { freePort, startNode, waitForHealth, type NodeProcess } from "../helpers/processes";
import { http, registerUser, skipWithoutAmqp, skipWithoutPostgres, tempDir, waitFor } from "../helpers/system";

const skip = skipWithoutAmqp || skipWithoutPostgres || (process.env.FAULTS_RABBITMQCTL === "0" ? "FAULTS_RABBITMQCTL=0" : false);
const STEADY = 60;
/** Sent at once right before RabbitMQ stops, so the notifications node has events in flight. */
const BURST = 200;
const MESSAGES = STEADY + BURST;
const OUTAGE_MS = 8_000;

const rabbitmqctl = (...args: string[]) => execFileSync("rabbitmqctl", args, { stdio: "pipe", timeout: 60_000 });



describe("fault: RabbitMQ restarts while two users chat across gateways", { skip }, () => {
	const logDir = tempDir("parley-fault-broker-");
	let cluster: FaultCluster;
	const nodes: Record<string, NodeProcess> = {};
	const bases: string[] = [];
	const sockets: Socket[] = [];
	let chatMetricsPort = 0;
	/** Set when the test is over, passed or not: the retry loops end, so the process can exit. */
	let ended = false;

	before(async () => {
		cluster = await faultCluster("parley-fb");
		const shared = cluster.env;
		chatMetricsPort = await freePort();
		nodes.chat = startNode({ ...shared, SERVICES: "users,conversations,messages,files", DATA_DIR: tempDir(), METRICS_PORT: String(chatMetricsPort) }, logDir, "chat");
		nodes.notifications = startNode({ ...shared, SERVICES: "notifications", DATA_DIR: tempDir() }, logDir, "notifications");
		for (const name of ["api1", "api2"]) {
			const port = await freePort();
			bases.push(`http://127.0.0.1:${port}`);
			nodes[name] = startNode({ ...shared, SERVICES: "api", PORT: String(port), DATA_DIR: tempDir() }, logDir, name);
		}
		for (const base of bases) await waitForHealth(base, ["users", "conversations", "messages", "notifications"], 90_000);
	});

	after(async () => {
		ended = true;
		for (const s of sockets) s.close();
		await cluster?.teardown(Object.values(nodes));
	});

	it(`${MESSAGES} messages with RabbitMQ down for ${OUTAGE_MS / 1000} s: each once, seq without a gap, one notification each, no node lost`, withNodeLogs(nodes, async () => {
		const [base1, base2] = bases;
		const a = await registerUser(base1, "fa");
		const b = await registerUser(base2, "fb");
		const sa = await faultSocket(base1, a.accessToken, true);
		const sb = await faultSocket(base2, b.accessToken, true);
		sockets.push(sa, sb);
		const conv = (await emitWithin(sa, "conversation:create", { type: "private", participants: [b.id] })).data;
		assert.ok((await emitWithin(sb, "conversation:accept", { conversationId: conv.id })).ok);

		const live = new Map<string, number>();
		sb.on("message:created", (m: { id: string; seq: number; conversation_id: string }) => {
			if (m.conversation_id === conv.id) live.set(m.id, (live.get(m.id) ?? 0) + 1);
		});

		let retries = 0;
		let startedAt = 0;
		let firstOkAfterStart = 0;
		const acked = new Map<string, string>(); // clientId -> message id
		const refusals = new Map<string, number>(); // error code of a refused or unanswered send -> times
		/** Where the sending stands, for a wait that times out. */
		const progress = (what: string) => (err: Error) => {
			throw new Error(`${err.message} waiting for ${what}: ${acked.size} sends acknowledged, ${retries} retried, refusals ${JSON.stringify(Object.fromEntries(refusals))}`);
		};

		/**
		 * The careful client: the same clientId again until the send is acknowledged, waiting 10 s for
		 * an ack as the web client does (a shorter wait turns a burst on a slow store into a storm of
		 * retries queued behind the sends they repeat).
		 */
		async function sendUntilAcked(clientId: string) {
			while (!ended) {
				const ack = await emitWithin(sa, "message:send", { conversationId: conv.id, content: `message ${clientId}`, clientId }, 10_000);
				if (ack.ok) {
					acked.set(clientId, ack.data.id);
					if (startedAt && !firstOkAfterStart) firstOkAfterStart = Date.now() - startedAt;
					return;
				}
				retries++;
				const code = ack.error?.code ?? "?";
				refusals.set(code, (refusals.get(code) ?? 0) + 1);
				await new Promise(r => setTimeout(r, 250));
			}
		}

		const steady = (async () => {
			for (let i = 0; i < STEADY; i++) {
				await sendUntilAcked(`steady-${i}`);
				await new Promise(r => setTimeout(r, 100));
			}
		})();

		// The outage, in the middle of the conversation, with a burst still being notified.
		await waitFor(async () => acked.size >= 10, 30_000, 50).catch(progress("10 acknowledged sends"));
		const burst = Promise.all(Array.from({ length: BURST }, (_, i) => sendUntilAcked(`burst-${i}`)));
		await waitFor(async () => acked.size >= 10 + BURST / 2, 90_000, 5).catch(progress("half the burst acknowledged"));
		const stoppedAt = Date.now();
		try {
			rabbitmqctl("stop_app");
			await new Promise(r => setTimeout(r, OUTAGE_MS));
		} finally {
			rabbitmqctl("start_app");
			startedAt = Date.now();
		}
		await Promise.all([steady, burst]);

		// Every node lived through it.
		for (const [name, node] of Object.entries(nodes)) assert.equal(node.child.exitCode, null, `${name} is still running (log: ${node.logFile})`);

		// The careful client's catch-up: everything after what it has, by seq.
		const seen = new Map<number, string>();
		let after = 0;
		for (;;) {
			const page = await emitWithin(sb, "message:list", { conversationId: conv.id, after, limit: 100 }, 10_000);
			assert.ok(page.ok, JSON.stringify(page.error));
			if (page.data.length === 0) break;
			for (const m of page.data as { id: string; seq: number }[]) {
				assert.ok(!seen.has(m.seq), `seq ${m.seq} once`);
				seen.set(m.seq, m.id);
				after = Math.max(after, m.seq);
			}
		}
		const ids = [...seen.values()];
		assert.equal(new Set(ids).size, MESSAGES, "each message once");
		assert.deepEqual([...acked.values()].sort(), [...ids].sort(), "exactly the acknowledged messages");
		const seqs = [...seen.keys()].sort((x, y) => x - y);
		assert.deepEqual(seqs, Array.from({ length: MESSAGES }, (_, i) => seqs[0] + i), "seq without a gap");
		assert.ok([...live.values()].every(n => n === 1), "no message arrived live twice");

		// Exactly one notification per message (b is the recipient of all of them).
		const notifiedAt = Date.now();
		await waitFor(async () => (await http(base2, "GET", "/notifications/unread/count", { token: b.accessToken })).body?.count >= MESSAGES, 120_000, 500);
		await new Promise(r => setTimeout(r, 3_000)); // a late duplicate would show by now
		const count = (await http(base2, "GET", "/notifications/unread/count", { token: b.accessToken })).body.count;
		assert.equal(count, MESSAGES, "one notification per message");

		// The chat node's queue metrics read RabbitMQ (every 15 s): the durable queue, its consumer, the dead letters.
		const metrics = await waitFor(async () => {
			const text = await (await fetch(`http://127.0.0.1:${chatMetricsPort}/metrics`)).text();
			return /parley_durable_queue_consumers\{[^}]*message\.created[^}]*\} 1/.test(text) && text.includes("parley_dead_letter_messages") ? text : null;
		}, 40_000, 1_000);
		assert.match(metrics, /parley_durable_queue_messages\{/);

		console.log(
			`  RabbitMQ down ${startedAt - stoppedAt} ms; first send acknowledged ${firstOkAfterStart} ms after it was back; ` +
				`${retries} retried sends; ${live.size}/${MESSAGES} delivered live, the rest by catch-up; ` +
				`notifications complete ${Date.now() - notifiedAt - 3_000} ms after the last send`,
		);
	}));
});
