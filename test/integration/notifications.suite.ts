/**
 * The API's notifications (REST) and the namespace /notifications, against the real gateway,
 * real sockets and the in-process event bus; run on the embedded store and on MongoDB.
 */
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { after, before, describe, it } from "node:test";
import { CHANNELS } from "../../lib/durable-events";
import { call, connectSocket, countEvents, emitAck, sleep, type TestSocket, waitForEvent } from "../helpers/sockets";
import { http, registerUser, startBroker, waitFor, type RunningSystem, storeTestEnv } from "../helpers/system";

type User = Awaited<ReturnType<typeof registerUser>>;
const ADMIN = { email: "notif-admin@example.test", password: "notif admin pw" };

export function runNotificationsSuite(mode: "embedded" | "mongo", mongoUrl: string | null, skip: string | false = false) {
	describe(`notifications (${mode})`, { skip }, () => {
		let sys: RunningSystem;
		let base: string;
		let adminToken: string;
		const sockets: TestSocket[] = [];

		const chat = async (u: User) => {
			const s = await connectSocket(base, u.accessToken);
			sockets.push(s);
			return s;
		};
		const notif = async (u: User) => {
			const s = await connectSocket(base, u.accessToken, "/notifications");
			sockets.push(s);
			return s;
		};
		const list = async (u: User, query = "") => (await http(base, "GET", `/notifications${query}`, { token: u.accessToken })).body as any[];
		const unread = async (u: User) => (await http(base, "GET", "/notifications/unread/count", { token: u.accessToken })).body.count as number;

		before(async () => {
			storeTestEnv("notifications-suite-secret-0123", mongoUrl);
			process.env.ADMIN_EMAIL = ADMIN.email;
			process.env.ADMIN_PASSWORD = ADMIN.password;
			delete process.env.TRANSPORTER;
			sys = await startBroker(["api", "users", "conversations", "messages", "notifications"]);
			base = sys.baseUrl;
			adminToken = (await http(base, "POST", "/auth/login", { body: ADMIN })).body.accessToken;
		});

		after(async () => {
			for (const s of sockets) s.close();
			await sys?.stop();
		});

		it("a message creates one notification per recipient, on every device, with the count", async () => {
			const [a, b] = [await registerUser(base, "na"), await registerUser(base, "nb")];
			const [sa, sb] = [await chat(a), await chat(b)];
			const [b1, b2, a1] = [await notif(b), await notif(b), await notif(a)];
			assert.deepEqual(await waitForEvent(b1, "notification:count"), { count: 0 }, "count on connect");
			const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
			await call(sa, "message:send", { conversationId: conv.id, content: "knock knock" });
			for (const s of [b1, b2]) {
				const n = await waitForEvent(s, "notification:created", p => p.related_id === conv.id);
				assert.equal(n.type, "message_request", "a pending chat makes a message request");
				assert.equal(n.user_id, b.id);
				assert.equal(n.sender_id, a.id);
				assert.equal(n.sender_name, a.username);
				assert.equal(n.content, "knock knock");
				assert.equal(n.is_read, false);
				assert.equal(n.isRead, false);
				assert.equal(n.id, n._id);
				assert.ok(n.created_at && n.createdAt === n.created_at);
				await waitForEvent(s, "notification:count", p => p.count === 1);
			}
			await call(sb, "conversation:accept", { conversationId: conv.id });
			await call(sa, "message:send", { conversationId: conv.id, content: "who's there" });
			const second = await waitForEvent(b1, "notification:created", p => p.content === "who's there");
			assert.equal(second.type, "message");
			assert.equal(second.message_type, "text");
			await sleep(300);
			assert.equal(countEvents(a1, "notification:created"), 0, "none for the sender");
			assert.equal(countEvents(b2, "notification:created"), 2, "each device once per notification");
			assert.equal(await unread(b), 2);
			const rest = await list(b);
			assert.deepEqual(rest.map(n => n.content), ["who's there", "knock knock"], "newest first");
		});

		it("a deleted message's notifications go, on every device, with the count; a deleted account's go with it", async () => {
			const [a, b] = [await registerUser(base, "da"), await registerUser(base, "db")];
			const sa = await chat(a);
			const [b1, b2] = [await notif(b), await notif(b)];
			const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
			const kept = await call(sa, "message:send", { conversationId: conv.id, content: "hello" });
			const unsent = await call(sa, "message:send", { conversationId: conv.id, content: "my password is hunter2" });
			const n = await waitForEvent(b1, "notification:created", p => p.content === "my password is hunter2");
			await waitForEvent(b1, "notification:count", p => p.count === 2);
			assert.deepEqual(await emitAck(sa, "message:delete", { messageId: unsent.id }), { ok: true });
			for (const s of [b1, b2]) {
				assert.deepEqual(await waitForEvent(s, "notification:deleted", p => p.notificationId === n.id), { notificationId: n.id });
				await waitForEvent(s, "notification:count", p => p.count === 1);
			}
			assert.deepEqual((await list(b)).map(x => x.content), ["hello"], "the unsent text is nowhere");
			assert.ok(kept.id);
			// The account goes: its notifications too.
			assert.equal((await http(base, "DELETE", `/users/${b.id}`, { token: b.accessToken })).status, 204);
			await waitFor(async () => ((await sys.broker.call("notifications.list", {}, { meta: { user: { id: b.id, username: b.username, roles: ["user"] } } })) as unknown[]).length === 0, 5000);
		});

		it("none while the recipient muted the conversation, until muteUntil", async () => {
			const [a, b] = [await registerUser(base, "ma"), await registerUser(base, "mb")];
			const [sa, sb] = [await chat(a), await chat(b)];
			const nb = await notif(b);
			const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
			await call(sb, "conversation:accept", { conversationId: conv.id });
			await http(base, "POST", `/conversations/${conv.id}/mute`, { token: b.accessToken, body: { muted: true, muteUntil: new Date(Date.now() + 1500).toISOString() } });
			await call(sa, "message:send", { conversationId: conv.id, content: "while muted" });
			await sleep(1700);
			await call(sa, "message:send", { conversationId: conv.id, content: "mute is over" });
			await waitForEvent(nb, "notification:created", p => p.content === "mute is over");
			assert.deepEqual((await list(b)).map(n => n.content), ["mute is over"]);
			await http(base, "POST", `/conversations/${conv.id}/mute`, { token: b.accessToken, body: { muted: true } });
			await call(sa, "message:send", { conversationId: conv.id, content: "muted for good" });
			await sleep(400);
			assert.deepEqual((await list(b)).map(n => n.content), ["mute is over"]);
		});

		it("group invites notify the added users", async () => {
			const [a, b, c] = [await registerUser(base, "ga"), await registerUser(base, "gb"), await registerUser(base, "gc")];
			const sa = await chat(a);
			const [nb, nc] = [await notif(b), await notif(c)];
			const group = await call(sa, "conversation:create", { type: "group", participants: [b.id], name: "Crew" });
			const invite = await waitForEvent(nb, "notification:created", p => p.type === "group_invite");
			assert.equal(invite.related_id, group.id);
			assert.equal(invite.conversation_name, "Crew");
			await call(sa, "conversation:add-member", { conversationId: group.id, userId: c.id });
			assert.equal((await waitForEvent(nc, "notification:created", p => p.type === "group_invite")).related_id, group.id);
			await call(sa, "message:send", { conversationId: group.id, content: "welcome" });
			const msg = await waitForEvent(nc, "notification:created", p => p.type === "message");
			assert.equal(msg.title, "Crew");
		});

		it("reading, deleting and read-all stay in sync on all devices", async () => {
			const [a, b] = [await registerUser(base, "sa"), await registerUser(base, "sb")];
			const sa = await chat(a);
			const [b1, b2] = [await notif(b), await notif(b)];
			const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
			for (let i = 0; i < 3; i++) await call(sa, "message:send", { conversationId: conv.id, content: `n${i}` });
			await waitFor(async () => (await unread(b)) === 3);
			const [n2, n1, n0] = await list(b);
			const read = await call(b1, "notification:read", { notificationId: n2.id });
			assert.equal(read.is_read, true);
			assert.deepEqual(await waitForEvent(b2, "notification:read"), { notificationId: n2.id, is_read: true });
			await waitForEvent(b2, "notification:count", p => p.count === 2);
			const viaRest = await http(base, "PATCH", `/notifications/${n1.id}/read`, { token: b.accessToken });
			assert.equal(viaRest.body.isRead, true);
			assert.equal((await http(base, "POST", `/notifications/${n1.id}/read`, { token: b.accessToken })).status, 200, "reading twice is fine");
			assert.deepEqual(await emitAck(b2, "notification:delete", { notificationId: n0.id }), { ok: true });
			assert.deepEqual(await waitForEvent(b1, "notification:deleted"), { notificationId: n0.id });
			assert.equal((await http(base, "GET", `/notifications/${n0.id}`, { token: b.accessToken })).status, 404);
			assert.equal((await call(b1, "notification:get", { notificationId: n1.id })).id, n1.id);
			await call(sa, "message:send", { conversationId: conv.id, content: "one more" });
			await waitForEvent(b1, "notification:count", p => p.count === 1);
			assert.deepEqual((await http(base, "PATCH", "/notifications/read-all", { token: b.accessToken })).body, { count: 0 });
			await waitForEvent(b2, "notification:count", p => p.count === 0);
			assert.equal((await http(base, "DELETE", `/notifications/${n2.id}`, { token: b.accessToken })).status, 204);
			assert.deepEqual(await call(b1, "notification:read-all", {}), { count: 0 });
			const ping = await call(b1, "notification:ping", {});
			assert.ok(!Number.isNaN(Date.parse(ping.timestamp)));
			assert.deepEqual(await waitForEvent(b1, "pong"), ping);
		});

		it("pages with X-Next-Cursor and filters unreadOnly", async () => {
			const [a, b] = [await registerUser(base, "pa"), await registerUser(base, "pb")];
			const sa = await chat(a);
			const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
			for (let i = 0; i < 5; i++) await call(sa, "message:send", { conversationId: conv.id, content: `p${i}` });
			await waitFor(async () => (await unread(b)) === 5);
			const seen: string[] = [];
			let cursor: string | null = null;
			for (let i = 0; i < 5; i++) {
				const res: Awaited<ReturnType<typeof http>> = await http(base, "GET", `/notifications?limit=2${cursor ? `&before=${encodeURIComponent(cursor)}` : ""}`, { token: b.accessToken });
				seen.push(...(res.body as any[]).map(n => n.content));
				cursor = res.headers.get("x-next-cursor");
				if (!cursor) break;
			}
			assert.deepEqual(seen, ["p4", "p3", "p2", "p1", "p0"]);
			const [latest] = await list(b);
			await http(base, "POST", `/notifications/${latest.id}/read`, { token: b.accessToken });
			assert.deepEqual((await list(b, "?unreadOnly=true")).map(n => n.content), ["p3", "p2", "p1", "p0"]);
			assert.equal((await http(base, "GET", "/notifications?limit=0", { token: b.accessToken })).status, 400);
		});

		it("another user's notification is never shown, changed or deleted", async () => {
			const [a, b, x] = [await registerUser(base, "oa"), await registerUser(base, "ob"), await registerUser(base, "ox")];
			const sa = await chat(a);
			const nx = await notif(x);
			const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
			await call(sa, "message:send", { conversationId: conv.id, content: "private" });
			await waitFor(async () => (await unread(b)) === 1);
			const [n] = await list(b);
			for (const [method, path] of [["GET", `/notifications/${n.id}`], ["POST", `/notifications/${n.id}/read`], ["PATCH", `/notifications/${n.id}/read`], ["DELETE", `/notifications/${n.id}`]]) {
				const res = await http(base, method, path, { token: x.accessToken });
				assert.equal(res.status, 404, `${method} ${path}`);
				assert.ok(!res.text.includes("private"));
			}
			for (const event of ["notification:get", "notification:read", "notification:delete"]) {
				const ack = await emitAck(nx, event, { notificationId: n.id });
				assert.equal(ack.ok, false);
				assert.equal(ack.error?.code, "NOT_FOUND", event);
			}
			assert.equal((await http(base, "GET", "/notifications")).status, 401);
			const still = (await list(b))[0];
			assert.equal(still.is_read, false, "unchanged");
		});

		it("broadcast: admins only, queued, to a list or to everybody", async () => {
			const [a, b] = [await registerUser(base, "ba"), await registerUser(base, "bb")];
			const nb = await notif(b);
			const denied = await http(base, "POST", "/notifications/broadcast", { token: a.accessToken, body: { title: "x", content: "y" } });
			assert.equal(denied.status, 403);
			assert.equal((await http(base, "POST", "/notifications/broadcast", { token: adminToken, body: { title: "", content: "y" } })).status, 400);
			const some = await http(base, "POST", "/notifications/broadcast", { token: adminToken, body: { title: "Only you", content: "hi b", userIds: [b.id] } });
			assert.equal(some.status, 202);
			assert.deepEqual(some.body, { queued: 1 });
			const got = await waitForEvent(nb, "notification:created", p => p.title === "Only you");
			assert.equal(got.type, "system");
			const all = await http(base, "POST", "/notifications/broadcast", { token: adminToken, body: { title: "Everyone", content: "maintenance tonight" } });
			assert.equal(all.status, 202);
			assert.ok(all.body.queued >= 3);
			await waitForEvent(nb, "notification:created", p => p.title === "Everyone");
			await waitFor(async () => (await list(a)).some(n => n.title === "Everyone"));
			assert.ok(!(await list(a)).some(n => n.title === "Only you"));
		});

		it("a redelivered event creates no second notification", async () => {
			const [a, b] = [await registerUser(base, "da"), await registerUser(base, "db")];
			const event = {
				eventId: `replayed-${crypto.randomUUID()}`,
				conversationId: "conv-replay",
				conversationType: "private",
				conversationName: null,
				senderId: a.id,
				senderName: a.username,
				senderAvatar: null,
				content: "twice?",
				messageType: "text",
				recipients: [{ userId: b.id, type: "message" }],
			};
			const send = (sys.broker as unknown as { sendToChannel(c: string, p: unknown): Promise<void> }).sendToChannel.bind(sys.broker);
			await send(CHANNELS.messageCreated, event);
			await send(CHANNELS.messageCreated, event);
			await send(CHANNELS.messageCreated, event);
			await waitFor(async () => (await unread(b)) >= 1);
			await sleep(300);
			assert.equal((await list(b)).filter(n => n.content === "twice?").length, 1);
		});

		it("answers bad /notifications payloads with ok:false and keeps the socket", async () => {
			const b = await registerUser(base, "fb");
			const nb = await notif(b);
			for (const event of ["notification:list", "notification:get", "notification:read", "notification:delete", "notification:read-all", "notification:ping"]) {
				for (const payload of ["text", 7, [1]]) {
					const ack = await emitAck(nb, event, payload);
					assert.equal(ack.ok, false, `${event} ${JSON.stringify(payload)}`);
					assert.equal(ack.error?.code, "VALIDATION_ERROR");
				}
			}
			for (const [event, payload] of [["notification:get", { notificationId: { $gt: "" } }], ["notification:list", { limit: "lots" }], ["notification:read", {}]] as const) {
				assert.equal((await emitAck(nb, event, payload)).error?.code, "VALIDATION_ERROR", event);
			}
			assert.ok(nb.connected);
			assert.deepEqual(await call(nb, "notification:list", {}), []);
		});
	});
}
