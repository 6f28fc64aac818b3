/**
 * Faults: a node lost while messages flow, nodes as separate processes over RabbitMQ.
 *
 * - Gateway loss: the gateway holding the recipient's socket is killed (SIGKILL). The web
 *   client's logic (reconnect, to the other gateway here, then `message:list { after }`) gets
 *   every message exactly once, with `seq` gap-free.
 * - Rolling redeploy: one of two chat nodes gets SIGTERM while messages are sent, then comes back;
 *   then the other. No acknowledged message is lost, and none is stored twice.
 *
 * Needs MongoDB (two chat nodes must share their store). Prints the recovery figures.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Socket } from "socket.io-client";
import { emitWithin, type FaultCluster, faultCluster, faultSocket, withNodeLogs } from "../helpers/fault-cluster";
import { freePort, startNode, waitForHealth, type NodeProcess } from "../helpers/processes";
import { registerUser, skipWithoutAmqp, skipWithoutPostgres, tempDir, waitFor } from "../helpers/system";

const skip = skipWithoutAmqp || skipWithoutPostgres || (process.env.TEST_MONGO_URL ? false : "TEST_MONGO_URL is not set: two chat nodes need a shared store");

type Msg = { id: string; seq: number; conversation_id: string; client_id?: string | null };


/** Everything after `after`, by seq, a page at a time: the catch-up of the web client. */
async function listAfter(socket: Socket, conversationId: string, after: number): Promise<Msg[]> {
	const out: Msg[] = [];
	for (;;) {
		const page = await emitWithin(socket, "message:list", { conversationId, after, limit: 100 }, 10_000);
		assert.ok(page.ok, JSON.stringify(page.error));
		if (page.data.length === 0) return out;
		out.push(...(page.data as Msg[]));
		after = Math.max(...(page.data as Msg[]).map(m => m.seq));
	}
}

describe("faults: a node lost while messages flow", { skip }, () => {
	const logDir = tempDir("parley-fault-nodes-");
	let cluster: FaultCluster;
	let shared: Record<string, string>;
	const nodes: Record<string, NodeProcess> = {};
	const bases: Record<string, string> = {};
	const sockets: Socket[] = [];
	/** Set when the suite is over, passed or not: the senders' retry loops end, so the process can exit. */
	let ended = false;

	before(async () => {
		cluster = await faultCluster("parley-fn");
		shared = cluster.env;
		nodes.users = startNode({ ...shared, SERVICES: "users,notifications", DATA_DIR: tempDir() }, logDir, "users");
		nodes.chat1 = startNode({ ...shared, SERVICES: "conversations,messages,files", DATA_DIR: tempDir() }, logDir, "chat1");
		nodes.chat2 = startNode({ ...shared, SERVICES: "conversations,messages,files", DATA_DIR: tempDir() }, logDir, "chat2");
		for (const name of ["api1", "api2"]) {
			const port = await freePort();
			bases[name] = `http://127.0.0.1:${port}`;
			nodes[name] = startNode({ ...shared, SERVICES: "api", PORT: String(port), DATA_DIR: tempDir() }, logDir, name);
		}
		for (const base of Object.values(bases)) await waitForHealth(base, ["users", "conversations", "messages", "notifications"], 90_000);
	});

	after(async () => {
		ended = true;
		for (const s of sockets) s.close();
		await cluster?.teardown(Object.values(nodes));
	});

	async function chatPair(prefix: string) {
		const a = await registerUser(bases.api1, `${prefix}a`);
		const b = await registerUser(bases.api1, `${prefix}b`);
		const sa = await faultSocket(bases.api1, a.accessToken, false);
		sockets.push(sa);
		const conv = (await emitWithin(sa, "conversation:create", { type: "private", participants: [b.id] })).data;
		return { a, b, sa, conv };
	}

	it("gateway loss: the recipient's client reconnects to the other gateway and catches up, every message once", withNodeLogs(nodes, async () => {
		const { b, sa, conv } = await chatPair("gl");
		let sb = await faultSocket(bases.api2, b.accessToken, false);
		sockets.push(sb);
		assert.ok((await emitWithin(sb, "conversation:accept", { conversationId: conv.id })).ok);

		// What the client holds, by seq: live events and catch-up pages land in the same place.
		const held = new Map<number, string>();
		let duplicates = 0;
		const hold = (m: Msg) => {
			if (m.conversation_id !== conv.id) return;
			if (held.has(m.seq)) {
				if (held.get(m.seq) !== m.id) duplicates++; // a different message at a seq it had: wrong
				return;
			}
			held.set(m.seq, m.id);
		};
		sb.on("message:created", hold);

		const N = 60;
		const sent: string[] = [];
		const sender = (async () => {
			for (let i = 0; i < N; i++) {
				const ack = await emitWithin(sa, "message:send", { conversationId: conv.id, content: `gl ${i}`, clientId: `gl-${i}` });
				assert.ok(ack.ok, JSON.stringify(ack.error));
				sent.push(ack.data.id);
				await new Promise(r => setTimeout(r, 50));
			}
		})();

		await waitFor(async () => sent.length >= 20, 30_000, 20);
		const killedAt = Date.now();
		await nodes.api2.stop("SIGKILL");
		// The web client: on disconnect, connect again (here the other gateway), then ask for what came after.
		sb = await faultSocket(bases.api1, b.accessToken, false);
		sockets.push(sb);
		sb.on("message:created", hold);
		const lastSeq = Math.max(0, ...held.keys());
		for (const m of await listAfter(sb, conv.id, lastSeq)) hold(m);
		const caughtUpAt = Date.now();
		await sender;
		// Anything sent while the catch-up ran came live; a last catch-up closes the gap for sure.
		for (const m of await listAfter(sb, conv.id, 0)) hold(m);

		assert.equal(duplicates, 0);
		assert.deepEqual([...held.values()].sort(), [...sent].sort(), "every message, once");
		const seqs = [...held.keys()].sort((x, y) => x - y);
		assert.deepEqual(seqs, Array.from({ length: N }, (_, i) => seqs[0] + i), "seq without a gap");
		console.log(`  gateway killed; the recipient reconnected and caught up in ${caughtUpAt - killedAt} ms`);
	}));

	it("rolling redeploy: SIGTERM of each chat node in turn while messages flow; no acknowledged message lost or stored twice", withNodeLogs(nodes, async () => {
		const { b, sa, conv } = await chatPair("rr");
		const sb = await faultSocket(bases.api1, b.accessToken, false);
		sockets.push(sb);
		assert.ok((await emitWithin(sb, "conversation:accept", { conversationId: conv.id })).ok);

		const acked = new Map<string, string>();
		let retries = 0;
		let stop = false;
		const sender = (async () => {
			for (let i = 0; !stop && !ended; i++) {
				const clientId = `rr-${i}`;
				while (!ended) {
					const ack = await emitWithin(sa, "message:send", { conversationId: conv.id, content: `rr ${i}`, clientId }, 10_000);
					if (ack.ok) {
						acked.set(clientId, ack.data.id);
						break;
					}
					retries++;
					await new Promise(r => setTimeout(r, 200));
				}
				await new Promise(r => setTimeout(r, 30));
			}
		})();

		for (const name of ["chat1", "chat2"]) {
			const before = acked.size;
			await waitFor(async () => acked.size >= before + 15, 60_000, 20);
			const stopped = await nodes[name].stop("SIGTERM");
			assert.equal(stopped.code, 0, `${name} stopped cleanly`);
			nodes[name] = startNode({ ...shared, SERVICES: "conversations,messages,files", DATA_DIR: tempDir() }, logDir, `${name}-again`);
			await waitFor(async () => acked.size >= before + 40, 60_000, 20);
		}
		stop = true;
		await sender;

		const stored = await listAfter(sb, conv.id, 0);
		const ids = stored.map(m => m.id);
		assert.equal(new Set(ids).size, ids.length, "nothing listed twice");
		assert.equal(stored.length, acked.size, "exactly the acknowledged messages are stored");
		assert.deepEqual([...acked.values()].sort(), [...ids].sort());
		const seqs = stored.map(m => m.seq).sort((x, y) => x - y);
		assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => seqs[0] + i), "seq without a gap");
		console.log(`  rolling redeploy of both chat nodes: ${acked.size} messages acknowledged, ${retries} sends retried, none lost or doubled`);
	}));
});
