/**
 * Reactions, replies and pins across nodes over the real RabbitMQ: two gateways, a users node and
 * the chat services; with MongoDB (FerretDB in CI) two messages nodes on one store, so that
 * concurrent reactions and replies are written by two processes' worth of services at once.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { call, connectSocket, emitAck, type TestSocket, waitForEvent } from "../helpers/sockets";
import { amqpCluster, clusterTestEnv, mongoUrlForTest, registerUser, skipWithoutAmqp, skipWithoutPostgres, startBroker, type RunningSystem, waitFor, waitUntilKnown } from "../helpers/system";

const skip = skipWithoutAmqp || skipWithoutPostgres;

describe("reactions, replies and pins across two gateway nodes over RabbitMQ", { skip }, () => {
	let gw1: RunningSystem;
	let gw2: RunningSystem;
	let usersNode: RunningSystem;
	const chatNodes: RunningSystem[] = [];
	let dropDb: () => Promise<void>;
	const sockets: TestSocket[] = [];

	before(async () => {
		dropDb = await clusterTestEnv("messaging-cluster-secret-0123456789");
		const mongo = process.env.TEST_MONGO_URL;
		if (mongo) process.env.MONGO_URL = mongoUrlForTest(mongo);
		else delete process.env.MONGO_URL;
		const shared = amqpCluster("parley-messaging");
		usersNode = await startBroker(["users"], shared);
		chatNodes.push(await startBroker(["conversations", "messages"], shared));
		// A second messages node needs a store both can reach: not two NeDB files in one directory.
		if (mongo) chatNodes.push(await startBroker(["messages"], shared));
		gw1 = await startBroker(["api"], shared);
		gw2 = await startBroker(["api"], shared);
		for (const gw of [gw1, gw2]) await gw.broker.waitForServices(["users", "conversations", "messages"], 30_000);
		// Every node that pushes must know both gateways.
		for (const node of [usersNode, ...chatNodes]) await waitUntilKnown(node, [gw1, gw2]);
		if (chatNodes.length > 1) {
			await waitFor(async () => {
				const registry = gw1.broker.registry as unknown as { getServiceList(o: object): { name: string }[] };
				return registry.getServiceList({ onlyAvailable: true }).filter(s => s.name === "messages").length >= 2;
			}, 30_000);
		}
	});

	after(async () => {
		for (const s of sockets) s.close();
		for (const n of [gw1, gw2, ...chatNodes, usersNode]) await n?.stop();
		delete process.env.MONGO_URL;
		await dropDb?.();
	});

	const connect = async (base: string, token: string) => {
		const s = await connectSocket(base, token);
		sockets.push(s);
		return s;
	};

	it("a reaction through one gateway reaches the other's sockets; concurrent reactions through both all count", async () => {
		const users = [await registerUser(gw1.baseUrl, "qa"), await registerUser(gw2.baseUrl, "qb"), await registerUser(gw1.baseUrl, "qc"), await registerUser(gw2.baseUrl, "qd")];
		const socks = [await connect(gw1.baseUrl, users[0].accessToken), await connect(gw2.baseUrl, users[1].accessToken), await connect(gw1.baseUrl, users[2].accessToken), await connect(gw2.baseUrl, users[3].accessToken)];
		const [sa, sb, sc, sd] = socks;
		const group = await call(sa, "conversation:create", { type: "group", participants: users.slice(1).map(u => u.id), name: "across" });
		await waitForEvent(sd, "message:created", p => p.conversation_id === group.id);
		const msg = await call(sa, "message:send", { conversationId: group.id, content: "react across nodes" });

		// Made through gateway 1, heard on gateway 2.
		await call(sc, "message:react", { messageId: msg.id, emoji: "👋" });
		const heard = await waitForEvent(sd, "message:reactions", p => p.messageId === msg.id);
		assert.deepEqual(heard, { conversationId: group.id, messageId: msg.id, reactions: [{ emoji: "👋", count: 1, user_ids: [users[2].id] }] });
		await waitForEvent(sb, "message:reactions", p => p.messageId === msg.id);

		// Everyone at once, through both gateways, three times over, each user twice at once.
		const ids = users.map(u => u.id).sort((x, y) => x - y);
		for (const emoji of ["🔥", "🎉", "💯"]) {
			const acks = await Promise.all([...socks, ...socks].map(s => emitAck(s, "message:react", { messageId: msg.id, emoji })));
			assert.ok(acks.every(x => x.ok), JSON.stringify(acks.find(x => !x.ok)));
		}
		for (const s of socks) {
			const [listed] = await call(s, "message:list", { conversationId: group.id, limit: 1 });
			assert.deepEqual(
				listed.reactions.map((r: any) => [r.emoji, r.count, [...r.user_ids].sort((x: number, y: number) => x - y)]),
				[["👋", 1, [users[2].id]], ...["🔥", "🎉", "💯"].map(e => [e, 4, ids])],
			);
		}
		// The last event each socket got says the same.
		await waitForEvent(sd, "message:reactions", p => p.messageId === msg.id && p.reactions.length === 4 && p.reactions.every((r: any) => r.emoji === "👋" || r.count === 4));
	});

	it("replies racing through both gateways are all counted; pins are heard on the other gateway", async () => {
		const a = await registerUser(gw1.baseUrl, "ra");
		const b = await registerUser(gw2.baseUrl, "rb");
		const [a1, b2] = [await connect(gw1.baseUrl, a.accessToken), await connect(gw2.baseUrl, b.accessToken)];
		const conv = await call(a1, "conversation:create", { type: "private", participants: [b.id] });
		await waitForEvent(b2, "conversation:created", p => p.conversationId === conv.id);
		await call(b2, "conversation:accept", { conversationId: conv.id });
		const root = await call(a1, "message:send", { conversationId: conv.id, content: "answer me" });

		const replies = await Promise.all(Array.from({ length: 8 }, (_, i) => call(i % 2 === 0 ? a1 : b2, "message:send", { conversationId: conv.id, content: `r${i}`, replyTo: root.id })));
		assert.ok(replies.every(r => r.reply_to.id === root.id));
		await waitForEvent(a1, "message:updated", p => p.id === root.id && p.reply_count === 8);
		await waitFor(async () => {
			const [listed] = await call(b2, "message:list", { conversationId: conv.id, before: root.seq + 1, limit: 1 });
			return listed.reply_count === 8;
		}, 10_000);
		const thread = await call(b2, "message:list", { conversationId: conv.id, replyTo: root.id, limit: 20 });
		assert.deepEqual(thread.map((m: any) => m.id).sort(), replies.map(r => r.id).sort());

		await call(a1, "message:pin", { messageId: root.id });
		assert.deepEqual(await waitForEvent(b2, "message:pinned", p => p.messageId === root.id), { conversationId: conv.id, messageId: root.id, userId: a.id });
		await waitForEvent(b2, "message:created", p => p.system_data?.event === "message_pinned");
		await call(b2, "message:unpin", { messageId: root.id });
		await waitForEvent(a1, "message:unpinned", p => p.messageId === root.id);
		assert.deepEqual(await call(a1, "conversation:pins", { conversationId: conv.id }), []);
	});
});
