/**
 * Unread notification counts kept in memory (lib/unread-counts.ts) with two notifications nodes
 * over RabbitMQ sharing one document store: each node keeps the counts it has read, the durable
 * events are shared between the two, and a read, a removal or a new notification through one node
 * holds on the other as soon as it is answered. No count ever drifts.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { call, connectSocket, type TestSocket } from "../helpers/sockets";
import { amqpCluster, clusterTestEnv, http, registerUser, skipWithoutAmqp, skipWithoutPostgres, startBroker, type RunningSystem, waitFor, waitUntilKnown } from "../helpers/system";
import { mongoUrlForTest } from "./chat.suite";

const skip = skipWithoutAmqp || skipWithoutPostgres || (process.env.TEST_MONGO_URL ? false : "TEST_MONGO_URL is not set: two notifications nodes need one shared document store");

describe("unread notification counts kept on two notifications nodes", { skip }, () => {
	let users: RunningSystem;
	let chat: RunningSystem;
	let n1: RunningSystem;
	let n2: RunningSystem;
	let dropDb: () => Promise<void>;
	const sockets: TestSocket[] = [];

	before(async () => {
		dropDb = await clusterTestEnv("counts-cache-secret-0123456789");
		process.env.MONGO_URL = mongoUrlForTest(process.env.TEST_MONGO_URL as string);
		const shared = amqpCluster("parley-counts");
		users = await startBroker(["users"], shared);
		chat = await startBroker(["api", "conversations", "messages"], shared);
		// Each gateway calls the notifications service of its own node (preferLocal).
		n1 = await startBroker(["api", "notifications"], shared);
		n2 = await startBroker(["api", "notifications"], shared);
		for (const n of [chat, n1, n2]) await n.broker.waitForServices(["users", "conversations", "messages", "notifications"], 30_000);
		await waitUntilKnown(n1, [n2, chat, users]);
		await waitUntilKnown(n2, [n1, chat, users]);
	});

	after(async () => {
		for (const s of sockets) s.close();
		for (const n of [n1, n2, chat, users]) await n?.stop();
		await dropDb?.();
		delete process.env.MONGO_URL;
		delete process.env.DATABASE_URL;
	});

	const countVia = async (node: RunningSystem, token: string) => {
		const res = await http(node.baseUrl, "GET", "/notifications/unread/count", { token });
		assert.equal(res.status, 200, res.text);
		return res.body.count as number;
	};
	/** Both nodes answer `n`: each from the count it keeps, once it has one. */
	const bothSay = async (token: string, n: number, what: string) => {
		await waitFor(async () => (await countVia(n1, token)) === n && (await countVia(n2, token)) === n, 10_000, 50).catch(async () => {
			assert.fail(`${what}: node 1 says ${await countVia(n1, token)}, node 2 says ${await countVia(n2, token)}, expected ${n}`);
		});
		// And they keep saying it: no node holds on to an older count.
		for (let i = 0; i < 3; i++) {
			assert.equal(await countVia(n1, token), n, `${what} (node 1)`);
			assert.equal(await countVia(n2, token), n, `${what} (node 2)`);
		}
	};

	it("new notifications, a read, a removal and read-all through either node: both count right at once", async () => {
		const [a, b] = [await registerUser(chat.baseUrl, "ca"), await registerUser(chat.baseUrl, "cb")];
		const sa = await connectSocket(chat.baseUrl, a.accessToken);
		sockets.push(sa);
		const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
		const send = async (n: number, tag: string) => {
			for (let i = 0; i < n; i++) await call(sa, "message:send", { conversationId: conv.id, content: `${tag} ${i}` });
		};

		await send(3, "first");
		await bothSay(b.accessToken, 3, "three messages");
		// Both nodes keep b's count now; the next notifications are written by either of them.
		await send(4, "more");
		await bothSay(b.accessToken, 7, "four more, each written by one node or the other");

		const list = (await http(n1.baseUrl, "GET", "/notifications?limit=50", { token: b.accessToken })).body as { id: string }[];
		assert.equal(list.length, 7);
		const read = await http(n1.baseUrl, "PATCH", `/notifications/${list[0].id}/read`, { token: b.accessToken });
		assert.equal(read.status, 200, read.text);
		assert.equal(await countVia(n2, b.accessToken), 6, "a read through node 1, counted through node 2 as soon as it answered");
		const removed = await http(n2.baseUrl, "DELETE", `/notifications/${list[1].id}`, { token: b.accessToken });
		assert.equal(removed.status, 204, removed.text);
		assert.equal(await countVia(n1, b.accessToken), 5, "a removal through node 2, counted through node 1 as soon as it answered");
		const again = await http(n2.baseUrl, "PATCH", `/notifications/${list[0].id}/read`, { token: b.accessToken });
		assert.equal(again.status, 200, "reading a read one again changes nothing");
		await bothSay(b.accessToken, 5, "after a read and a removal");

		const all = await http(n2.baseUrl, "PATCH", "/notifications/read-all", { token: b.accessToken });
		assert.equal(all.status, 200, all.text);
		assert.equal(await countVia(n1, b.accessToken), 0, "read-all through node 2, counted through node 1 at once");
		await send(2, "after");
		await bothSay(b.accessToken, 2, "two after read-all");
	});
});
