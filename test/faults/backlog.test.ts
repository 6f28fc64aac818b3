/**
 * Fault: the notifications node stays down (SIGKILL) for FAULTS_BACKLOG_SECONDS (300 by default:
 * five minutes) of steady traffic. Measured and checked:
 * - the backlog in the durable queue equals the messages sent: each was published once (the
 *   outbox sweep did not publish again what was already queued), and none is still in the outbox;
 * - once a notifications node is back, how long the queue takes to drain, at what rate;
 * - exactly one notification per message in the end.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import amqplib from "amqplib";
import type { Socket } from "socket.io-client";
import { CHANNELS, prefixed } from "../../lib/durable-events";
import { emitWithin, type FaultCluster, faultCluster, faultSocket, withNodeLogs } from "../helpers/fault-cluster";
import { freePort, startNode, waitForHealth, type NodeProcess } from "../helpers/processes";
import { http, registerUser, skipWithoutAmqp, skipWithoutPostgres, TEST_AMQP_URL, tempDir, waitFor } from "../helpers/system";

const skip = skipWithoutAmqp || skipWithoutPostgres;
const DOWN_SECONDS = Number(process.env.FAULTS_BACKLOG_SECONDS ?? 300);
const RATE = 10; // messages a second while the node is down



const pct = (values: number[], p: number) => [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.floor(values.length * p))];

describe(`fault: the notifications node down for ${DOWN_SECONDS} s of traffic`, { skip, timeout: (DOWN_SECONDS + 300) * 1000 }, () => {
	const logDir = tempDir("parley-fault-backlog-");
	let cluster: FaultCluster;
	let shared: Record<string, string>;
	let base = "";
	let metricsPort = 0;
	const nodes: Record<string, NodeProcess> = {};
	const sockets: Socket[] = [];

	before(async () => {
		cluster = await faultCluster("parley-fq");
		shared = cluster.env;
		metricsPort = await freePort();
		nodes.chat = startNode({ ...shared, SERVICES: "users,conversations,messages,files", DATA_DIR: tempDir(), METRICS_PORT: String(metricsPort) }, logDir, "chat");
		nodes.notifications = startNode({ ...shared, SERVICES: "notifications", DATA_DIR: tempDir() }, logDir, "notifications");
		const port = await freePort();
		base = `http://127.0.0.1:${port}`;
		nodes.api = startNode({ ...shared, SERVICES: "api", PORT: String(port), DATA_DIR: tempDir() }, logDir, "api");
		await waitForHealth(base, ["users", "conversations", "messages", "notifications"], 90_000);
	});

	after(async () => {
		for (const s of sockets) s.close();
		await cluster?.teardown(Object.values(nodes));
	});

	it("queues each event once, drains the backlog when the node is back, and notifies each message once", withNodeLogs(nodes, async () => {
		const a = await registerUser(base, "qa");
		const b = await registerUser(base, "qb");
		const sa = await faultSocket(base, a.accessToken, true);
		sockets.push(sa);
		const conv = (await emitWithin(sa, "conversation:create", { type: "private", participants: [b.id] })).data;
		const sb = await faultSocket(base, b.accessToken, true);
		sockets.push(sb);
		assert.ok((await emitWithin(sb, "conversation:accept", { conversationId: conv.id })).ok);

		await nodes.notifications.stop("SIGKILL");
		const downAt = Date.now();
		let sent = 0;
		const ackMs: number[] = [];
		while (Date.now() - downAt < DOWN_SECONDS * 1000) {
			const due = downAt + ((sent + 1) * 1000) / RATE;
			const sentAt = Date.now();
			// 20 s: on FerretDB 1.x (CI's MongoDB) an update scans the whole collection, and acks of
			// the 3,000th message in one conversation took 1-2 s here and past 5 s on a busy CI machine.
			const ack = await emitWithin(sa, "message:send", { conversationId: conv.id, content: `backlog ${sent}`, clientId: `bl-${sent}` }, 20_000);
			const took = Date.now() - sentAt;
			ackMs.push(took);
			if (took > 5_000) console.log(`  slow ack: message ${sent}, ${Math.round((sentAt - downAt) / 1000)} s in, ${took} ms, ${JSON.stringify(ack.ok ? "ok" : ack.error)}`);
			assert.ok(ack.ok, `message ${sent}, ${Math.round((sentAt - downAt) / 1000)} s in: ${JSON.stringify(ack.error)}`);
			sent++;
			const wait = due - Date.now();
			if (wait > 0) await new Promise(r => setTimeout(r, wait));
		}
		// The outbox sweep runs every 10 s: give it two rounds to (wrongly) publish anything again.
		await new Promise(r => setTimeout(r, 21_000));

		const queue = `notifications.${prefixed(CHANNELS.messageCreated, cluster.namespace)}`;
		const connection = await amqplib.connect(TEST_AMQP_URL);
		const depth = async () => {
			const ch = await connection.createChannel();
			try {
				return (await ch.checkQueue(queue)).messageCount;
			} finally {
				await ch.close();
			}
		};
		try {
			const backlog = await depth();
			assert.equal(backlog, sent, "each message's event is queued once");
			const outbox = (await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text()).match(/^parley_outbox_backlog(?:\{[^}]*\})? (\d+)/m);
			assert.equal(Number(outbox?.[1]), 0, "nothing left in the outbox");

			nodes.notifications = startNode({ ...shared, SERVICES: "notifications", DATA_DIR: tempDir() }, logDir, "notifications-again");
			const backAt = Date.now();
			await waitFor(async () => (await depth()) === 0, 240_000, 250);
			const drainedIn = Date.now() - backAt;
			await waitFor(async () => (await http(base, "GET", "/notifications/unread/count", { token: b.accessToken })).body?.count >= sent, 120_000, 500);
			await new Promise(r => setTimeout(r, 3_000));
			const count = (await http(base, "GET", "/notifications/unread/count", { token: b.accessToken })).body.count;
			assert.equal(count, sent, "one notification per message");
			console.log(
				`  notifications down ${DOWN_SECONDS} s at ${RATE} msg/s: backlog ${backlog} events (= ${sent} messages sent, outbox 0); ` +
					`drained in ${drainedIn} ms after the node was started (${Math.round((backlog / drainedIn) * 1000)} events/s, node start included); ${count} notifications; ` +
					`send acks while it was down: p50 ${pct(ackMs, 0.5)} ms, p99 ${pct(ackMs, 0.99)} ms, max ${Math.max(...ackMs)} ms`,
			);
		} finally {
			await connection.close();
		}
	}));
});
