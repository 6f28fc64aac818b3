/**
 * What one message:send costs in store round trips (the performance budget), counted with the
 * docs mixin's per-operation counters on a real system, on both document stores:
 * - before the sender's ack, at most two: the message and the conversation's head (the
 *   conversation, its members and blocks come from the cache);
 * - after it, work done per batch, not per message or per recipient: a burst of messages to a
 *   group costs a few notification writes and count queries, not one per recipient.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { resetStoreOps, storeOps } from "../../mixins/docs.mixin";
import { call, connectSocket, emitAck, sleep, type TestSocket } from "../helpers/sockets";
import { http, registerUser, startBroker, tempDir, type RunningSystem, waitFor } from "../helpers/system";
import { mongoUrlForTest } from "./chat.suite";

const sum = (ops: Record<string, number>, collections: string[]) =>
	Object.entries(ops)
		.filter(([key]) => collections.includes(key.split(".")[0]))
		.reduce((n, [, v]) => n + v, 0);

const SENDER_PATH = ["messages", "conversations", "memberships", "blocks"];

for (const mode of ["embedded", "mongo"] as const) {
	const mongo = process.env.TEST_MONGO_URL;
	const skip = mode === "mongo" && !mongo ? "TEST_MONGO_URL is not set: MongoDB round-trip count skipped (.ci/run sets it)" : false;
	describe(`store round trips of message:send (${mode})`, { skip }, () => {
		let sys: RunningSystem;
		const sockets: TestSocket[] = [];
		before(async () => {
			process.env.DATA_DIR = tempDir();
			process.env.RATE_LIMIT = "0";
			process.env.BCRYPT_ROUNDS = "4";
			delete process.env.DATABASE_URL;
			if (mode === "mongo" && mongo) process.env.MONGO_URL = mongoUrlForTest(mongo);
			else delete process.env.MONGO_URL;
			sys = await startBroker(["api", "users", "conversations", "messages", "notifications", "files"]);
		});
		after(async () => {
			for (const s of sockets) s.disconnect();
			await sys?.stop();
			delete process.env.MONGO_URL;
		});

		it("takes two store operations before the ack, and batches the rest", async () => {
			const base = sys.baseUrl;
			const users = [];
			for (let i = 0; i < 5; i++) users.push(await registerUser(base, "ops"));
			const [a, ...others] = users;
			const group = await http(base, "POST", "/conversations", { token: a.accessToken, body: { participantIds: others.map(u => u.id), isGroup: true, name: "ops" } });
			assert.equal(group.status, 201, group.text);
			const conversationId = group.body.id as string;
			const sa = await connectSocket(base, a.accessToken);
			const sb = await connectSocket(base, others[0].accessToken);
			const nb = await connectSocket(base, others[0].accessToken, "/notifications");
			sockets.push(sa, sb, nb);
			// The first message fills the caches (conversation metadata, sender profile).
			await call(sa, "message:send", { conversationId, content: "warm", clientId: "warm" });
			await sleep(1000);

			resetStoreOps();
			const ack = await emitAck(sa, "message:send", { conversationId, content: "one", clientId: "one" });
			assert.equal(ack.ok, true, JSON.stringify(ack.error));
			const senderPath = sum(storeOps(), SENDER_PATH);
			assert.ok(senderPath <= 2, `before the ack: ${JSON.stringify(storeOps())}`);

			// A burst: 30 messages, 4 recipients each, 120 notifications.
			await sleep(1000);
			resetStoreOps();
			const burst = 30;
			const started = Date.now();
			let notified = 0;
			nb.on("notification:created", () => notified++);
			const acks = await Promise.all(Array.from({ length: burst }, (_, i) => emitAck(sa, "message:send", { conversationId, content: `m${i}`, clientId: `b${i}` })));
			assert.ok(acks.every(x => x.ok));
			await waitFor(async () => notified >= burst);
			// The outbox flags are written in batches too (every 250 ms).
			await waitFor(async () => (storeOps()["messages.updateMany"] ?? 0) > 0);
			const ops = storeOps();
			assert.equal(ops["messages.insert"], burst);
			assert.ok((ops["conversations.updateMany"] ?? 0) <= burst, JSON.stringify(ops));
			assert.equal(ops["memberships.updateMany"] ?? 0, 0, "no per-message membership write");
			assert.equal(ops["notifications.insert"] ?? 0, 0, "no notification written alone");
			assert.equal(ops["notifications.count"] ?? 0, 0, "no count query per push");
			// 120 notifications in at most one write per message (fewer when messages come close
			// together), never one per recipient; the unread counts, read once (the warm message),
			// are kept in memory and moved by each write: no count query at all.
			const writes = ops["notifications.insertMany"] ?? 0;
			assert.ok(writes >= 1 && writes <= burst, `notification writes for ${burst} messages x 4 recipients: ${JSON.stringify(ops)}`);
			assert.equal(ops["notifications.countEach"] ?? 0, 0, `counts kept, not queried: ${JSON.stringify(ops)}`);
			// Outbox flags: one write per 250 ms, whatever the number of messages in it.
			const flushes = Math.ceil((Date.now() - started) / 250) + 1;
			assert.ok((ops["messages.updateMany"] ?? 0) <= Math.min(flushes, burst), `${JSON.stringify(ops)} in ${Date.now() - started} ms`);
			console.log(`${mode}: before the ack ${senderPath}; a burst of ${burst} messages to 4 recipients: ${JSON.stringify(ops)}`);

			// A reply that mentions someone pays for what it uses, and only that: the original read
			// once, one write of the mention on the memberships, the root's reply_count recounted
			// (count, set, count again). The members' names come from the cache.
			await sleep(500);
			const root = (await call(sa, "message:send", { conversationId, content: "root", clientId: "root" })) as { id: string };
			await sleep(500);
			resetStoreOps();
			const reply = await emitAck<{ mentions: number[]; reply_to: { id: string } }>(sa, "message:send", {
				conversationId,
				content: `@${others[0].username} see above`,
				clientId: "reply",
				replyTo: root.id,
			});
			assert.equal(reply.ok, true, JSON.stringify(reply.error));
			assert.deepEqual(reply.data?.mentions, [others[0].id]);
			const replyOps = storeOps();
			assert.equal(replyOps["messages.insert"], 1);
			assert.equal(replyOps["messages.findById"] ?? 0, 1, `the original, read once: ${JSON.stringify(replyOps)}`);
			assert.equal(replyOps["memberships.updateMany"] ?? 0, 1, `one mention write: ${JSON.stringify(replyOps)}`);
			assert.ok((replyOps["messages.count"] ?? 0) <= 2 * 5, `reply_count recounted: ${JSON.stringify(replyOps)}`);
			assert.equal(sum(replyOps, ["users", "blocks"]), 0, `names from the cache: ${JSON.stringify(replyOps)}`);
			console.log(`${mode}: a reply with a mention, up to its ack: ${JSON.stringify(replyOps)}`);
		});
	});
}
