/**
 * Targeted fan-out (lib/socket-directory.ts): with three gateways over RabbitMQ, a push goes only
 * to the gateways holding its users' sockets. A socket is known to every pushing node once it is
 * connected (no push misses a fresh socket), and the map survives a gateway going and another
 * coming.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Middleware } from "moleculer";
import { call, connectSocket, sleep, type TestSocket, waitForEvent } from "../helpers/sockets";
import { amqpCluster, clusterTestEnv, registerUser, skipWithoutAmqp, skipWithoutPostgres, startBroker, type RunningSystem, waitFor, waitUntilKnown } from "../helpers/system";

const skip = skipWithoutAmqp || skipWithoutPostgres;

/** Counts the pushes (socket.push events) that reach a gateway. */
function deliveryCounter() {
	const counts = { pushes: 0 };
	const middleware = {
		name: "DeliveryCounter",
		localEvent(next: (ctx: unknown) => unknown, event: { name: string }) {
			if (event.name !== "socket.push") return next;
			return (ctx: unknown) => {
				counts.pushes++;
				return next(ctx);
			};
		},
	};
	return { counts, middleware: middleware as unknown as Middleware };
}

describe("pushes go only to the gateways holding the users' sockets", { skip }, () => {
	let chat: RunningSystem;
	const gateways: RunningSystem[] = [];
	let dropDb: () => Promise<void>;
	const sockets: TestSocket[] = [];
	let shared: ReturnType<typeof amqpCluster>;
	const counters: ReturnType<typeof deliveryCounter>[] = [];

	const startGateway = async () => {
		const counter = deliveryCounter();
		const gw = await startBroker(["api"], { ...shared, middlewares: [counter.middleware] });
		await gw.broker.waitForServices(["users", "conversations", "messages", "notifications"], 30_000);
		await waitUntilKnown(chat, [gw]);
		gateways.push(gw);
		counters.push(counter);
		return { gw, counts: counter.counts };
	};

	before(async () => {
		dropDb = await clusterTestEnv("fanout-secret-0123456789");
		delete process.env.MONGO_URL;
		shared = amqpCluster("parley-fanout");
		chat = await startBroker(["users", "conversations", "messages", "notifications"], shared);
	});

	after(async () => {
		for (const s of sockets) s.close();
		for (const gw of gateways) await gw.stop().catch(() => undefined);
		await chat?.stop();
		await dropDb?.();
		delete process.env.DATABASE_URL;
	});

	const connect = async (base: string, token: string, nsp = "/chat") => {
		const s = await connectSocket(base, token, nsp);
		sockets.push(s);
		return s;
	};

	it("reaches the two gateways of a conversation and not the third, a fresh socket at once, and a gateway that replaced one", async () => {
		const { gw: gw1 } = await startGateway();
		const { gw: gw2, counts: c2 } = await startGateway();
		const { gw: gw3, counts: c3 } = await startGateway();
		const a = await registerUser(gw1.baseUrl, "fa");
		const b = await registerUser(gw1.baseUrl, "fb");
		const sa = await connect(gw1.baseUrl, a.accessToken);
		const sb = await connect(gw2.baseUrl, b.accessToken);
		const nb = await connect(gw2.baseUrl, b.accessToken, "/notifications");
		const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
		await call(sb, "conversation:accept", { conversationId: conv.id });
		await waitForEvent(sa, "request:accepted");

		// Once the chat node has every gateway's list, gateway 3 (no sockets) gets nothing.
		await sleep(500);
		c3.pushes = 0;
		c2.pushes = 0;
		for (let i = 0; i < 10; i++) await call(sa, "message:send", { conversationId: conv.id, content: `m${i}` });
		await waitForEvent(sb, "message:created", p => p.content === "m9");
		await waitFor(async () => nb.received.filter(r => r.event === "notification:created").length >= 10);
		assert.ok(c2.pushes >= 10, `gateway 2 (b's sockets) got ${c2.pushes} pushes`);
		assert.equal(c3.pushes, 0, "gateway 3 holds no socket of a or b");

		// A socket that just connected to gateway 3 hears the very next push.
		const c = await registerUser(gw3.baseUrl, "fc");
		const sc = await connect(gw3.baseUrl, c.accessToken);
		const withC = await call(sa, "conversation:create", { type: "private", participants: [c.id] });
		await waitForEvent(sc, "conversation:created", p => p.conversationId === withC.id);

		// Gateway 2 goes; b comes back through a new gateway, which hears a's messages.
		sb.close();
		nb.close();
		await gw2.stop();
		const { gw: gw4 } = await startGateway();
		const sb4 = await connect(gw4.baseUrl, b.accessToken);
		await call(sa, "message:send", { conversationId: conv.id, content: "after the restart" });
		await waitForEvent(sb4, "message:created", p => p.content === "after the restart");
		// Gateway 3 heard only what concerned c.
		const beforeMore = c3.pushes;
		for (let i = 0; i < 5; i++) await call(sa, "message:send", { conversationId: conv.id, content: `later ${i}` });
		await waitForEvent(sb4, "message:created", p => p.content === "later 4");
		assert.equal(c3.pushes, beforeMore);
	});
});
