/**
 * Two gateway nodes and the chat services on a third broker, one namespace over RabbitMQ:
 * a message sent from a socket on one gateway reaches sockets on the other.
 */
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { after, before, describe, it } from "node:test";
import { call, connectSocket, countEvents, emitAck, sleep, type TestSocket, waitForEvent } from "../helpers/sockets";
import { createTestDatabase, registerUser, skipWithoutAmqp, skipWithoutPostgres, startBroker, TEST_AMQP_URL, tempDir, type RunningSystem, waitUntilKnown } from "../helpers/system";
import { mongoUrlForTest } from "./chat.suite";

const skip = skipWithoutAmqp || skipWithoutPostgres;

describe("chat across two gateway nodes over RabbitMQ", { skip }, () => {
	let gw1: RunningSystem;
	let gw2: RunningSystem;
	let chat: RunningSystem;
	let dropDb: () => Promise<void>;
	const sockets: TestSocket[] = [];

	before(async () => {
		const db = await createTestDatabase();
		dropDb = db.drop;
		process.env.DATABASE_URL = db.url;
		process.env.DATA_DIR = tempDir();
		if (process.env.TEST_MONGO_URL) process.env.MONGO_URL = mongoUrlForTest(process.env.TEST_MONGO_URL);
		else delete process.env.MONGO_URL;
		process.env.JWT_SECRET = "chat-cluster-secret-0123456789";
		process.env.BCRYPT_ROUNDS = "4";
		process.env.RATE_LIMIT = "0";
		process.env.RATE_LIMIT_AUTH = "0";
		const shared = {
			namespace: `parley-chat-${crypto.randomBytes(4).toString("hex")}`,
			transporter: { type: "AMQP", options: { url: TEST_AMQP_URL, socketOptions: { noDelay: true }, prefetch: 100, autoDeleteQueues: 60_000 } },
		};
		chat = await startBroker(["users", "conversations", "messages"], shared);
		gw1 = await startBroker(["api"], shared);
		gw2 = await startBroker(["api"], shared);
		for (const gw of [gw1, gw2]) await gw.broker.waitForServices(["users", "conversations", "messages"], 30_000);
		// And the chat node must know both gateways, or its broadcasts reach only the one it has seen.
		await waitUntilKnown(chat, [gw1, gw2]);
	});

	after(async () => {
		for (const s of sockets) s.close();
		await gw1?.stop();
		await gw2?.stop();
		await chat?.stop();
		await dropDb?.();
	});

	const connect = async (base: string, token: string) => {
		const s = await connectSocket(base, token);
		sockets.push(s);
		return s;
	};

	it("delivers every message once, in order, to sockets on both gateways", async () => {
		const a = await registerUser(gw1.baseUrl, "xa");
		const b = await registerUser(gw2.baseUrl, "xb");
		const a1 = await connect(gw1.baseUrl, a.accessToken);
		const a2 = await connect(gw2.baseUrl, a.accessToken);
		const b2 = await connect(gw2.baseUrl, b.accessToken);

		const conv = await call(a1, "conversation:create", { type: "private", participants: [b.id] });
		await waitForEvent(b2, "conversation:created", p => p.conversationId === conv.id);
		await call(b2, "conversation:accept", { conversationId: conv.id });
		assert.deepEqual(await waitForEvent(a1, "request:accepted"), { conversationId: conv.id, acceptedBy: b.id });

		const sent = [];
		for (let i = 0; i < 20; i++) sent.push(await call(a1, "message:send", { conversationId: conv.id, content: `m${i}`, clientId: `x${i}` }));
		assert.deepEqual(sent.map(m => m.seq), Array.from({ length: 20 }, (_, i) => i + 1));
		for (const s of [a1, a2, b2]) await waitForEvent(s, "message:created", p => p.seq === 20);
		// A retry through the other gateway returns the first message and pushes nothing.
		assert.equal((await call(a2, "message:send", { conversationId: conv.id, content: "m3", clientId: "x3" })).id, sent[3].id);
		await sleep(300);
		for (const s of [a1, a2, b2]) {
			const got = s.received.filter(r => r.event === "message:created" && r.payload.conversation_id === conv.id).map(r => r.payload.seq);
			assert.deepEqual(got, Array.from({ length: 20 }, (_, i) => i + 1), "each message once, in order");
		}

		// Typing crosses gateways too, but never echoes to the typist.
		await call(a1, "conversation:join", { conversationId: conv.id });
		await call(b2, "conversation:join", { conversationId: conv.id });
		await call(b2, "typing", { conversationId: conv.id, isTyping: true });
		assert.deepEqual(await waitForEvent(a1, "typing"), { conversationId: conv.id, userId: b.id, isTyping: true });
		assert.equal(countEvents(b2, "typing"), 0);

		// A socket that was away catches up through the other gateway.
		b2.close();
		for (let i = 0; i < 3; i++) await call(a2, "message:send", { conversationId: conv.id, content: `late ${i}` });
		const b1 = await connect(gw1.baseUrl, b.accessToken);
		const missed = await call(b1, "message:list", { conversationId: conv.id, after: 20 });
		assert.deepEqual(missed.map((m: any) => m.seq), [21, 22, 23]);
		assert.equal((await emitAck(b1, "conversation:mark-read", { conversationId: conv.id })).ok, true);
	});

	it("runs a group across gateways: system messages and member events reach every node", async () => {
		const [a, b, c] = [await registerUser(gw1.baseUrl, "ga"), await registerUser(gw2.baseUrl, "gb"), await registerUser(gw1.baseUrl, "gc")];
		const sa = await connect(gw1.baseUrl, a.accessToken);
		const sb = await connect(gw2.baseUrl, b.accessToken);
		const sc = await connect(gw2.baseUrl, c.accessToken);
		const group = await call(sa, "conversation:create", { type: "group", participants: [b.id], name: "across" });
		await waitForEvent(sb, "message:created", p => p.conversation_id === group.id && p.system_data?.event === "group_created");
		await call(sa, "conversation:add-member", { conversationId: group.id, userId: c.id });
		await waitForEvent(sc, "conversation:invited", p => p.conversationId === group.id);
		await waitForEvent(sb, "members:added", p => p.userId === c.id);
		const msg = await call(sc, "message:send", { conversationId: group.id, content: "hello from node 2" });
		await waitForEvent(sa, "message:created", p => p.id === msg.id);
		await waitForEvent(sb, "message:created", p => p.id === msg.id);
	});
});
