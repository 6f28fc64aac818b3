/**
 * Presence across nodes over the real RabbitMQ: two gateways, two users nodes (one fans out) and
 * the chat services. A subscriber on one gateway hears of a user on the other within 2 s, once;
 * a user with sockets on both gateways who closes one stays online. And the cost: the messages
 * between nodes for presence, counted on every node's transporter, are printed: none while
 * nothing changes, a handful per change.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Middleware } from "moleculer";
import { connectSocket, emitAck, sleep, type TestSocket } from "../helpers/sockets";
import { registerUser, skipWithoutAmqp, skipWithoutPostgres, startBroker, type RunningSystem, waitFor, waitUntilKnown, amqpCluster, clusterTestEnv } from "../helpers/system";

const skip = skipWithoutAmqp || skipWithoutPostgres;

type Entry = { userId: number; status: string; last_seen_at: string | null };

/** The packets presence sends between nodes, counted where they leave a node. */
const PRESENCE_EVENTS = new Set(["presence.delta", "presence.push"]);
const PRESENCE_ACTIONS = new Set(["api.presenceState", "users.presenceOf", "conversations.privatePartners", "conversations.blockRelations"]);
const traffic = { events: 0, requests: 0, responses: 0, byName: new Map<string, number>() };
const presenceRequests = new Set<string>();
const countPresencePackets: Middleware = {
	transporterSend(next: (topic: string, data: Buffer, meta: { packet?: { type: string; payload: Record<string, unknown> } }) => Promise<void>) {
		return (topic: string, data: Buffer, meta: { packet?: { type: string; payload: Record<string, unknown> } }) => {
			const packet = meta?.packet;
			const bump = (name: string) => traffic.byName.set(name, (traffic.byName.get(name) ?? 0) + 1);
			if (packet?.type === "EVENT" && PRESENCE_EVENTS.has(String(packet.payload.event))) {
				traffic.events++;
				bump(String(packet.payload.event));
			} else if (packet?.type === "REQ" && PRESENCE_ACTIONS.has(String(packet.payload.action))) {
				traffic.requests++;
				presenceRequests.add(String(packet.payload.id));
				bump(String(packet.payload.action));
			} else if (packet?.type === "RES" && presenceRequests.delete(String(packet.payload.id))) {
				traffic.responses++;
				bump("(responses)");
			}
			return next(topic, data, meta);
		};
	},
} as unknown as Middleware;
const resetTraffic = () => {
	traffic.events = traffic.requests = traffic.responses = 0;
	traffic.byName.clear();
};
const total = () => traffic.events + traffic.requests + traffic.responses;
const describeTraffic = () => [...traffic.byName].map(([k, v]) => `${k}: ${v}`).join(", ") || "nothing";

describe("presence across two gateways and two users nodes over RabbitMQ", { skip }, () => {
	let gw1: RunningSystem;
	let gw2: RunningSystem;
	let users1: RunningSystem;
	let users2: RunningSystem;
	let dropDb: () => Promise<void>;
	const sockets: TestSocket[] = [];

	before(async () => {
		dropDb = await clusterTestEnv("presence-cluster-secret-0123456789");
		delete process.env.MONGO_URL;
		delete process.env.PRESENCE_AWAY_SECONDS;
		const shared = { ...amqpCluster("parley-presence"), middlewares: [countPresencePackets] };
		// The chat services (blocks, partners) live with the first users node (embedded document store: one node).
		users1 = await startBroker(["users", "conversations", "messages"], shared);
		users2 = await startBroker(["users"], shared);
		gw1 = await startBroker(["api"], shared);
		gw2 = await startBroker(["api"], shared);
		for (const gw of [gw1, gw2]) await gw.broker.waitForServices(["users", "conversations", "messages"], 30_000);
		await waitUntilKnown(users1, [gw1, gw2, users2]);
		await waitUntilKnown(users2, [gw1, gw2, users1]);
		await waitUntilKnown(gw1, [users1, users2]);
		await waitUntilKnown(gw2, [users1, users2]);
	});

	after(async () => {
		for (const s of sockets) s.close();
		await gw1?.stop();
		await gw2?.stop();
		await users2?.stop();
		await users1?.stop();
		await dropDb?.();
	});

	const connect = async (base: string, token: string) => {
		const s = await connectSocket(base, token);
		sockets.push(s);
		return s;
	};
	const changes = (s: TestSocket, mark: number, userId: number) => s.received.slice(mark).filter(r => r.event === "presence:changed" && r.payload.userId === userId).map(r => r.payload as Entry);
	const within2s = (s: TestSocket, mark: number, userId: number, status: string) => waitFor(async () => changes(s, mark, userId).find(e => e.status === status), 2_000, 20);

	it("a subscriber on gateway 1 hears of a user on gateway 2 within 2 s, once (two users nodes, one fans out)", async () => {
		const a = await registerUser(gw1.baseUrl, "ca");
		const b = await registerUser(gw2.baseUrl, "cb");
		const sa = await connect(gw1.baseUrl, a.accessToken);
		const ack = await emitAck<Entry[]>(sa, "presence:subscribe", { userIds: [b.id] });
		assert.deepEqual(ack.data, [{ userId: b.id, status: "offline", last_seen_at: null }]);
		const mark = sa.received.length;
		let t0 = Date.now();
		const sb = await connect(gw2.baseUrl, b.accessToken);
		await within2s(sa, mark, b.id, "online");
		console.log(`  online: gateway 2 → gateway 1 in ${Date.now() - t0} ms`);
		t0 = Date.now();
		sb.close();
		const offline = await within2s(sa, mark, b.id, "offline");
		console.log(`  offline: gateway 2 → gateway 1 in ${Date.now() - t0} ms`);
		assert.ok(offline.last_seen_at);
		await sleep(500);
		assert.deepEqual(
			changes(sa, mark, b.id).map(e => e.status),
			["online", "offline"],
			"each change once, though two users nodes hear of it",
		);
		// Both users nodes answer the same.
		for (const node of [users1, users2]) {
			const [entry] = (await node.broker.call("users.presenceOf", { viewerId: a.id, ids: [b.id] })) as Entry[];
			assert.deepEqual(entry, offline);
		}
	});

	it("a user with sockets on both gateways who closes one stays online", async () => {
		const a = await registerUser(gw1.baseUrl, "da");
		const b = await registerUser(gw1.baseUrl, "db");
		const sa = await connect(gw2.baseUrl, a.accessToken);
		await emitAck(sa, "presence:subscribe", { userIds: [b.id] });
		const mark = sa.received.length;
		const on1 = await connect(gw1.baseUrl, b.accessToken);
		const on2 = await connect(gw2.baseUrl, b.accessToken);
		await within2s(sa, mark, b.id, "online");
		on1.close();
		await sleep(1_000);
		assert.deepEqual(
			changes(sa, mark, b.id).map(e => e.status),
			["online"],
			"no offline while a socket is open on the other gateway",
		);
		const [entry] = (await users2.broker.call("users.presenceOf", { viewerId: a.id, ids: [b.id] })) as Entry[];
		assert.equal(entry.status, "online");
		on2.close();
		await within2s(sa, mark, b.id, "offline");
	});

	it("costs nothing while nothing changes, and a few messages per change (printed)", async () => {
		const N = 40;
		const people: Awaited<ReturnType<typeof registerUser>>[] = [];
		for (let i = 0; i < N; i++) people.push(await registerUser(i % 2 ? gw2.baseUrl : gw1.baseUrl, `m${i}`));
		const open: TestSocket[] = [];
		for (let i = 0; i < N; i++) open.push(await connect(i % 2 ? gw2.baseUrl : gw1.baseUrl, people[i].accessToken));
		// Each watches the next five.
		for (let i = 0; i < N; i++) await emitAck(open[i], "presence:subscribe", { userIds: [1, 2, 3, 4, 5].map(k => people[(i + k) % N].id) });
		await sleep(1_000);

		resetTraffic();
		const quietMs = 10_000;
		await sleep(quietMs);
		const quiet = total();
		console.log(`  ${N} users connected on 2 gateways, 2 users nodes, ${N * 5} subscriptions, no changes: ${quiet} presence messages in ${quietMs / 1000} s (${(quiet * 60_000) / quietMs} a minute)`);
		assert.equal(quiet, 0, describeTraffic());

		// One change: a user with 5 subscribers (on both gateways) goes offline.
		resetTraffic();
		open[7].close();
		await waitFor(async () => changes(open[2], 0, people[7].id).some(e => e.status === "offline"), 2_000, 20);
		await sleep(500);
		console.log(`  one change (offline, 5 subscribers on 2 gateways): ${total()} messages between nodes (${describeTraffic()})`);
		// The delta to each users node, the pushes to the gateways with receivers, the fanning node's partner and block lookups.
		assert.ok(total() <= 2 + 2 + 4, describeTraffic());

		// One subscription change: one delta per users node.
		resetTraffic();
		await emitAck(open[0], "presence:unsubscribe", { userIds: [people[1].id] });
		await sleep(500);
		console.log(`  one unsubscribe: ${total()} messages (${describeTraffic()})`);
		assert.equal(total(), 2, describeTraffic());
	});
});
