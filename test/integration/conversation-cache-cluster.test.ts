/**
 * The conversation metadata cache (lib/read-cache.ts) with two conversations nodes over RabbitMQ,
 * each with its own in-memory cache: a change made through one node holds on the other as soon as
 * it is answered. A block, a removal from a group, a mute: the next send, typing or notification
 * through the other node already obeys it.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { call, connectSocket, emitAck, type TestSocket, waitForEvent } from "../helpers/sockets";
import { amqpCluster, clusterTestEnv, registerUser, skipWithoutAmqp, skipWithoutPostgres, startBroker, type RunningSystem, waitUntilKnown } from "../helpers/system";
import { mongoUrlForTest } from "./chat.suite";

const skip = skipWithoutAmqp || skipWithoutPostgres || (process.env.TEST_MONGO_URL ? false : "TEST_MONGO_URL is not set: two chat nodes need one shared document store");

describe("conversation metadata cached on two nodes", { skip }, () => {
	let users: RunningSystem;
	let nodeA: RunningSystem;
	let nodeB: RunningSystem;
	let dropDb: () => Promise<void>;
	const sockets: TestSocket[] = [];

	before(async () => {
		dropDb = await clusterTestEnv("meta-cache-secret-0123456789");
		process.env.MONGO_URL = mongoUrlForTest(process.env.TEST_MONGO_URL as string);
		const shared = amqpCluster("parley-meta");
		users = await startBroker(["users"], shared);
		// Each gateway calls the conversations and messages of its own node (preferLocal).
		nodeA = await startBroker(["api", "conversations", "messages"], shared);
		nodeB = await startBroker(["api", "conversations", "messages"], shared);
		for (const n of [nodeA, nodeB]) await n.broker.waitForServices(["users", "conversations", "messages"], 30_000);
		await waitUntilKnown(nodeA, [nodeB, users]);
		await waitUntilKnown(nodeB, [nodeA, users]);
	});

	after(async () => {
		for (const s of sockets) s.close();
		await nodeA?.stop();
		await nodeB?.stop();
		await users?.stop();
		await dropDb?.();
		delete process.env.MONGO_URL;
		delete process.env.DATABASE_URL;
	});

	const connect = async (base: string, token: string) => {
		const s = await connectSocket(base, token);
		sockets.push(s);
		return s;
	};

	it("a block or a removal made through one node holds at once on the other", async () => {
		const [a, b, c] = [await registerUser(nodeA.baseUrl, "ma"), await registerUser(nodeA.baseUrl, "mb"), await registerUser(nodeA.baseUrl, "mc")];
		const sa = await connect(nodeA.baseUrl, a.accessToken);
		const sb = await connect(nodeB.baseUrl, b.accessToken);
		const sc = await connect(nodeB.baseUrl, c.accessToken);
		const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
		await call(sb, "conversation:accept", { conversationId: conv.id });
		// Both nodes have the conversation cached, each from its own send.
		await call(sa, "message:send", { conversationId: conv.id, content: "a on A" });
		await call(sb, "message:send", { conversationId: conv.id, content: "b on B" });

		await call(sb, "user:block", { targetUserId: a.id });
		const refused = await emitAck(sa, "message:send", { conversationId: conv.id, content: "after the block" });
		assert.equal(refused.ok, false);
		assert.equal(refused.error?.code, "FORBIDDEN");
		await call(sb, "user:unblock", { targetUserId: a.id });
		assert.equal((await emitAck(sa, "message:send", { conversationId: conv.id, content: "after the unblock" })).ok, true);

		const group = await call(sa, "conversation:create", { type: "group", participants: [b.id, c.id], name: "g" });
		await call(sc, "message:send", { conversationId: group.id, content: "c on B" });
		await call(sc, "typing", { conversationId: group.id, isTyping: true });
		await call(sa, "conversation:remove-member", { conversationId: group.id, userId: c.id });
		const send = await emitAck(sc, "message:send", { conversationId: group.id, content: "after my removal" });
		assert.equal(send.error?.code, "NOT_FOUND");
		const typing = await emitAck(sc, "typing", { conversationId: group.id, isTyping: false });
		assert.equal(typing.error?.code, "NOT_FOUND");
		// The others still talk, through either node.
		await call(sb, "message:send", { conversationId: group.id, content: "b on B" });
		await waitForEvent(sa, "message:created", p => p.conversation_id === group.id && p.content === "b on B");
	});
});
