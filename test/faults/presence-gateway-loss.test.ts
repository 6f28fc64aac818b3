/**
 * Faults: a gateway dies (SIGKILL) while a user's only socket is on it. Nothing tells the cluster
 * but the silence: the users node drops that gateway's users when Moleculer declares the node
 * disconnected (heartbeat timeout, 15 s in moleculer.config.ts), and a subscriber on the other
 * gateway gets `offline` within 30 s of the kill. Nodes are separate processes over RabbitMQ.
 * Prints the measured time.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Socket } from "socket.io-client";
import { emitWithin, type FaultCluster, faultCluster, faultSocket, withNodeLogs } from "../helpers/fault-cluster";
import { freePort, startNode, waitForHealth, type NodeProcess } from "../helpers/processes";
import { registerUser, skipWithoutAmqp, skipWithoutPostgres, tempDir, waitFor } from "../helpers/system";

const skip = skipWithoutAmqp || skipWithoutPostgres;

type Entry = { userId: number; status: string; last_seen_at: string | null };

describe("faults: the gateway holding a user's socket is killed", { skip }, () => {
	const logDir = tempDir("parley-fault-presence-");
	let cluster: FaultCluster;
	const nodes: Record<string, NodeProcess> = {};
	const bases: Record<string, string> = {};
	const sockets: Socket[] = [];

	before(async () => {
		cluster = await faultCluster("parley-fp");
		nodes.users = startNode({ ...cluster.env, SERVICES: "users,conversations,messages", DATA_DIR: tempDir() }, logDir, "users");
		for (const name of ["api1", "api2"]) {
			const port = await freePort();
			bases[name] = `http://127.0.0.1:${port}`;
			nodes[name] = startNode({ ...cluster.env, SERVICES: "api", PORT: String(port), DATA_DIR: tempDir() }, logDir, name);
		}
		for (const base of Object.values(bases)) await waitForHealth(base, ["users", "conversations", "messages"], 90_000);
	});

	after(async () => {
		for (const s of sockets) s.close();
		await cluster?.teardown(Object.values(nodes));
	});

	it("a subscriber on the other gateway gets offline within 30 s of the SIGKILL", withNodeLogs(nodes, async () => {
		const a = await registerUser(bases.api1, "fpa");
		const b = await registerUser(bases.api1, "fpb");
		const sa = await faultSocket(bases.api1, a.accessToken, false);
		sockets.push(sa);
		const heard: { entry: Entry; at: number }[] = [];
		sa.on("presence:changed", (entry: Entry) => heard.push({ entry, at: Date.now() }));
		const ack = await emitWithin(sa, "presence:subscribe", { userIds: [b.id] }, 10_000);
		assert.ok(ack.ok, JSON.stringify(ack.error));
		// The users node must know api2 before b connects there (it pulls its state when it meets it).
		await waitFor(async () => {
			const sb = await faultSocket(bases.api2, b.accessToken, false);
			sockets.push(sb);
			const seen = await waitFor(async () => heard.some(h => h.entry.userId === b.id && h.entry.status === "online"), 3_000, 50).catch(() => false);
			if (!seen) sb.close();
			return seen;
		}, 60_000, 500);

		const killedAt = Date.now();
		await nodes.api2.stop("SIGKILL");
		const offline = await waitFor(async () => heard.find(h => h.entry.userId === b.id && h.entry.status === "offline"), 30_000, 100);
		const took = offline.at - killedAt;
		console.log(`  gateway killed (SIGKILL); the subscriber on the other gateway got offline after ${took} ms`);
		assert.ok(took <= 30_000, `${took} ms`);
		assert.ok(offline.entry.last_seen_at, "with a last seen");
		// GET /users/:id agrees.
		const res = await fetch(`${bases.api1}/users/${b.id}`, { headers: { authorization: `Bearer ${a.accessToken}` } });
		assert.equal(((await res.json()) as { status: string }).status, "offline");
	}));
});
