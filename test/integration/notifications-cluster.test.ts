/**
 * The durable event flow in a real cluster over RabbitMQ, nodes as separate processes:
 * the notifications node is killed (SIGKILL) while messages are sent; when it comes back,
 * exactly one notification per message exists and reaches the recipient's socket.
 * A redelivered event creates no duplicate; a poison event ends in the dead-letter queue.
 */
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { after, before, describe, it } from "node:test";
import amqplib from "amqplib";
import { CHANNELS, DEAD_LETTER_QUEUE, prefixed, removeNamespaceTopology } from "../../lib/durable-events";
import { freePort, startNode, waitForHealth, type NodeProcess } from "../helpers/processes";
import { call, connectSocket, type TestSocket, waitForEvent } from "../helpers/sockets";
import { createTestDatabase, http, registerUser, skipWithoutAmqp, skipWithoutPostgres, TEST_AMQP_URL, tempDir, waitFor } from "../helpers/system";
import { mongoUrlForTest } from "./chat.suite";

const skip = skipWithoutAmqp || skipWithoutPostgres;
const N = 20;

describe("notifications survive a dead notifications node (RabbitMQ cluster)", { skip }, () => {
	const logDir = tempDir("parley-notif-cluster-");
	const namespace = `parley-nt-${crypto.randomBytes(4).toString("hex")}`;
	let dropDb: () => Promise<void>;
	let base: string;
	let api: NodeProcess;
	let chat: NodeProcess;
	let notifications: NodeProcess;
	let notifEnv: Record<string, string>;
	const sockets: TestSocket[] = [];

	before(async () => {
		const db = await createTestDatabase();
		dropDb = db.drop;
		const port = await freePort();
		base = `http://127.0.0.1:${port}`;
		const shared: Record<string, string> = {
			TRANSPORTER: TEST_AMQP_URL,
			NAMESPACE: namespace,
			JWT_SECRET: crypto.randomBytes(24).toString("hex"),
			DATABASE_URL: db.url,
			BCRYPT_ROUNDS: "4",
			RATE_LIMIT: "0",
			RATE_LIMIT_AUTH: "0",
		};
		if (process.env.TEST_MONGO_URL) shared.MONGO_URL = mongoUrlForTest(process.env.TEST_MONGO_URL);
		chat = startNode({ ...shared, SERVICES: "users,conversations,messages", DATA_DIR: tempDir() }, logDir, "chat");
		notifEnv = { ...shared, SERVICES: "notifications", DATA_DIR: tempDir() };
		notifications = startNode(notifEnv, logDir, "notifications1");
		api = startNode({ ...shared, SERVICES: "api", PORT: String(port), DATA_DIR: tempDir() }, logDir, "api");
		await waitForHealth(base, ["users", "conversations", "messages", "notifications"], 90_000);
	});

	after(async () => {
		for (const s of sockets) s.close();
		for (const p of [api, chat, notifications]) await p?.stop("SIGTERM");
		await dropDb?.();
		// The durable queues of this test's namespace would stay in RabbitMQ forever.
		await removeNamespaceTopology(TEST_AMQP_URL, namespace);
	});

	it(`${N} messages sent while the notifications node is dead become exactly ${N} notifications`, async () => {
		const a = await registerUser(base, "ka");
		const b = await registerUser(base, "kb");
		const sa = await connectSocket(base, a.accessToken);
		const sb = await connectSocket(base, b.accessToken);
		const nb = await connectSocket(base, b.accessToken, "/notifications");
		sockets.push(sa, sb, nb);
		const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
		await call(sb, "conversation:accept", { conversationId: conv.id });

		const killed = await notifications.stop("SIGKILL");
		assert.equal(killed.signal, "SIGKILL");
		for (let i = 0; i < N; i++) await call(sa, "message:send", { conversationId: conv.id, content: `while down ${i}`, clientId: `down-${i}` });
		// Nothing could have been notified yet.
		assert.equal(nb.received.filter(r => r.event === "notification:created").length, 0);

		notifications = startNode(notifEnv, logDir, "notifications2");
		await waitFor(async () => nb.received.filter(r => r.event === "notification:created").length >= N, 60_000, 200);
		// Until the cluster notices the killed node is gone (heartbeat timeout), some calls still go to it.
		await waitFor(async () => (await http(base, "GET", "/notifications/unread/count", { token: b.accessToken })).body?.count === N, 90_000);
		const listed = (await http(base, "GET", "/notifications?limit=100", { token: b.accessToken })).body as { content: string; type: string }[];
		assert.equal(listed.length, N);
		assert.deepEqual(new Set(listed.map(n => n.content)), new Set(Array.from({ length: N }, (_, i) => `while down ${i}`)));
		assert.ok(listed.every(n => n.type === "message"));
		await new Promise(r => setTimeout(r, 500));
		assert.equal(nb.received.filter(r => r.event === "notification:created").length, N, "each reached the socket once");
		await waitForEvent(nb, "notification:count", p => p.count === N);
	});

	it("a redelivered event makes no duplicate; a poison event goes to the dead-letter queue while others flow", async () => {
		const a = await registerUser(base, "pa");
		const b = await registerUser(base, "pb");
		const nb = await connectSocket(base, b.accessToken, "/notifications");
		sockets.push(nb);
		const conn = await amqplib.connect(TEST_AMQP_URL);
		const ch = await conn.createConfirmChannel();
		const publish = (payload: unknown) =>
			new Promise<void>((resolve, reject) =>
				ch.publish(prefixed(CHANNELS.messageCreated, namespace), "", Buffer.from(JSON.stringify(payload)), { persistent: true }, err => (err ? reject(err) : resolve())),
			);
		try {
			const event = {
				eventId: `redelivered-${crypto.randomUUID()}`,
				conversationId: "c-redelivery",
				conversationType: "private",
				conversationName: null,
				senderId: a.id,
				senderName: a.username,
				senderAvatar: null,
				content: "only once",
				messageType: "text",
				recipients: [{ userId: b.id, type: "message" }],
			};
			await publish(event);
			await publish(event);
			await publish({ poison: true, recipients: "nobody" });
			await publish({ ...event, eventId: `after-poison-${crypto.randomUUID()}`, content: "after the poison" });
			await waitForEvent(nb, "notification:created", p => p.content === "after the poison", 30_000);
			const dlq = prefixed(DEAD_LETTER_QUEUE, namespace);
			await waitFor(async () => (await ch.checkQueue(dlq)).messageCount >= 1, 30_000, 250);
			const listed = await waitFor(async () => {
				const res = await http(base, "GET", "/notifications", { token: b.accessToken });
				return res.status === 200 ? (res.body as { content: string }[]) : null;
			}, 60_000);
			assert.equal(listed.filter(n => n.content === "only once").length, 1);
			assert.equal(listed.filter(n => n.content === "after the poison").length, 1);
			const dead = await ch.get(dlq, { noAck: false });
			assert.ok(dead);
			assert.deepEqual(JSON.parse(dead.content.toString()), { poison: true, recipients: "nobody" });
			ch.ack(dead);
		} finally {
			await conn.close();
		}
	});
});
