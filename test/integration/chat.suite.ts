/**
 * The API's conversations and messages, and the namespace /chat, against the real gateway with
 * real sockets, run on the embedded document store and on MongoDB (FerretDB in CI).
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { http, registerUser, startBroker, type RunningSystem, waitFor, storeTestEnv } from "../helpers/system";
import { call, connectSocket, countEvents, emitAck, sleep, type TestSocket, waitForEvent } from "../helpers/sockets";

type User = Awaited<ReturnType<typeof registerUser>>;

export { mongoUrlForTest } from "../helpers/system";

function assertFail(ack: { ok: boolean; error?: { code: string } }, code: string, label = "") {
	assert.equal(ack.ok, false, `${label}: expected ${code}, got ok`);
	assert.equal(ack.error?.code, code, `${label}: ${JSON.stringify(ack.error)}`);
}

/** The smallest bytes the files service takes for a PNG, and a PDF (a file, not an image). */
const PNG = Buffer.concat([Buffer.from("89504e470d0a1a0a0000000d49484452", "hex"), Buffer.alloc(200, 7)]);
const PDF = Buffer.from("%PDF-1.7\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n");

export function runChatSuite(mode: "embedded" | "mongo", mongoUrl: string | null, skip: string | false = false) {
	describe(`chat (${mode})`, { skip }, () => {
		let sys: RunningSystem;
		let base: string;
		const sockets: TestSocket[] = [];

		const newUser = (p: string) => registerUser(base, p);
		const connect = async (u: User) => {
			const s = await connectSocket(base, u.accessToken);
			sockets.push(s);
			return s;
		};
		/** An upload of `bytes` by u; its `/files/<id>` url. */
		const upload = async (u: User, bytes: Buffer = PNG, fileName = "pic.png") => {
			const res = await http(base, "POST", "/upload/file-base64", { token: u.accessToken, body: { fileName, base64: bytes.toString("base64") } });
			assert.equal(res.status, 201, res.text);
			return res.body.url as string;
		};
		/** The action as the users service would call it for `u`: real services, no gateway in between. */
		const asUser = <T = any>(u: User, action: string, params: unknown) => sys.broker.call<T, unknown>(action, params, { meta: { user: { id: u.id, username: u.username, roles: [] } } });
		/** A accepted private chat between a and b; returns its id. */
		const privateChat = async (a: User, b: User, sa: TestSocket, sb: TestSocket) => {
			const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
			await call(sb, "conversation:accept", { conversationId: conv.id });
			return conv.id as string;
		};

		before(async () => {
			storeTestEnv("chat-suite-secret-0123456789", mongoUrl);
			// files: group pictures and attachments are checked against real uploads.
			sys = await startBroker(["api", "users", "conversations", "messages", "files"]);
			base = sys.baseUrl;
		});

		after(async () => {
			for (const s of sockets) s.close();
			await sys?.stop();
		});

		describe("private chats and message requests", () => {
			it("creates a pending request, tells both sides, and never duplicates the pair", async () => {
				const [a, b] = [await newUser("pa"), await newUser("pb")];
				const [sa, sb] = [await connect(a), await connect(b)];
				const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
				assert.equal(conv.type, "private");
				assert.equal(conv.isGroup, false);
				assert.equal(conv.status, "pending");
				assert.equal(conv.initiator_id, a.id);
				assert.deepEqual([...conv.participants].sort(), [a.id, b.id].sort());
				assert.equal(conv.id, conv._id);
				assert.equal(conv.unread_count, 0);
				for (const s of [sa, sb]) {
					const ev = await waitForEvent(s, "conversation:created", p => p.conversationId === conv.id);
					assert.equal(ev.conversation.id, conv.id);
				}
				// Again, from either side and over REST: the same conversation.
				const again = await call(sb, "conversation:create", { type: "private", participants: [a.id] });
				assert.equal(again.id, conv.id);
				const rest = await http(base, "POST", "/conversations", { token: a.accessToken, body: { participantIds: [String(b.id)], isGroup: false } });
				assert.equal(rest.status, 200);
				assert.equal(rest.body.id, conv.id);
				await sleep(200);
				assert.equal(countEvents(sa, "conversation:created", p => p.conversationId === conv.id), 1);
			});

			it("lets only the initiator send until accepted; requests are listed apart", async () => {
				const [a, b] = [await newUser("ra"), await newUser("rb")];
				const [sa, sb] = [await connect(a), await connect(b)];
				const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
				await call(sa, "message:send", { conversationId: conv.id, content: "hello?" });
				assertFail(await emitAck(sb, "message:send", { conversationId: conv.id, content: "hi" }), "FORBIDDEN", "reply before accept");
				const requests = await http(base, "GET", "/conversations/requests", { token: b.accessToken });
				assert.deepEqual(requests.body.map((c: any) => c.id), [conv.id]);
				assert.ok(!(await http(base, "GET", "/conversations", { token: b.accessToken })).body.some((c: any) => c.id === conv.id));
				assert.ok((await http(base, "GET", "/conversations", { token: a.accessToken })).body.some((c: any) => c.id === conv.id));
				// The initiator accepting changes nothing.
				assert.equal((await call(sa, "conversation:accept", { conversationId: conv.id })).status, "pending");
				const accepted = await call(sb, "conversation:accept", { conversationId: conv.id });
				assert.equal(accepted.status, "accepted");
				const ev = await waitForEvent(sa, "request:accepted");
				assert.deepEqual(ev, { conversationId: conv.id, acceptedBy: b.id });
				const twice = await http(base, "POST", `/conversations/${conv.id}/accept`, { token: b.accessToken });
				assert.equal(twice.status, 200);
				assert.equal(twice.body.status, "accepted");
				assert.equal((await call(sb, "message:send", { conversationId: conv.id, content: "hi" })).seq, 2);
				assert.equal((await http(base, "GET", "/conversations/requests", { token: b.accessToken })).body.length, 0);
			});

			it("a declined request lets nobody send", async () => {
				const [c, d] = [await newUser("dc"), await newUser("dd")];
				const [sc, sd] = [await connect(c), await connect(d)];
				const conv = await call(sc, "conversation:create", { type: "private", participants: [d.id] });
				assertFail(await emitAck(sc, "conversation:decline", { conversationId: conv.id }), "FORBIDDEN", "initiator declines");
				const declined = await call(sd, "conversation:decline", { conversationId: conv.id });
				assert.equal(declined.status, "declined");
				assert.deepEqual(await waitForEvent(sc, "request:declined"), { conversationId: conv.id, declinedBy: d.id });
				assertFail(await emitAck(sc, "message:send", { conversationId: conv.id, content: "please" }), "FORBIDDEN", "initiator after decline");
				assertFail(await emitAck(sd, "message:send", { conversationId: conv.id, content: "no" }), "FORBIDDEN", "addressee after decline");
			});

			it("refuses a private chat with oneself, with several people, or with nobody real", async () => {
				const a = await newUser("solo");
				const sa = await connect(a);
				assertFail(await emitAck(sa, "conversation:create", { type: "private", participants: [a.id] }), "VALIDATION_ERROR", "self");
				assertFail(await emitAck(sa, "conversation:create", { type: "private", participants: [1, 2] }), "VALIDATION_ERROR", "two others");
				assertFail(await emitAck(sa, "conversation:create", { type: "private", participants: [99999999] }), "NOT_FOUND", "unknown user");
				assertFail(await emitAck(sa, "conversation:create", { type: "private", participants: ["x"] }), "VALIDATION_ERROR", "not an id");
			});
		});

		describe("messages", () => {
			it("delivers message:created once to every socket of every participant, sender's devices included", async () => {
				const [a, b] = [await newUser("ma"), await newUser("mb")];
				const [sa1, sa2, sb1, sb2] = [await connect(a), await connect(a), await connect(b), await connect(b)];
				const id = await privateChat(a, b, sa1, sb1);
				const msg = await call(sa1, "message:send", { conversationId: id, content: "to all devices", attachments: [] });
				assert.equal(msg.content, "to all devices");
				assert.equal(msg.conversation_id, id);
				assert.equal(msg.sender_id, a.id);
				assert.equal(msg.sender.id, a.id);
				assert.equal(msg.sender.name, a.username);
				assert.equal(msg.type, "text");
				assert.equal(msg.seq, 1);
				assert.equal(msg.deleted, false);
				assert.ok(msg.created_at && msg.createdAt === msg.created_at);
				for (const s of [sa1, sa2, sb1, sb2]) await waitForEvent(s, "message:created", p => p.id === msg.id);
				await sleep(200);
				for (const s of [sa1, sa2, sb1, sb2]) assert.equal(countEvents(s, "message:created", p => p.id === msg.id), 1);
			});

			it("a retried clientId returns the first message and pushes nothing again", async () => {
				const [a, b] = [await newUser("ia"), await newUser("ib")];
				const [sa, sb] = [await connect(a), await connect(b)];
				const id = await privateChat(a, b, sa, sb);
				const first = await call(sa, "message:send", { conversationId: id, content: "once", clientId: "c-1" });
				const retries = await Promise.all([1, 2, 3].map(() => call(sa, "message:send", { conversationId: id, content: "once", clientId: "c-1" })));
				for (const r of retries) assert.equal(r.id, first.id);
				const rest = await http(base, "POST", `/conversations/${id}/messages`, { token: a.accessToken, body: { content: "once", clientId: "c-1" } });
				assert.equal(rest.body.id, first.id);
				await sleep(300);
				assert.equal(countEvents(sb, "message:created", p => p.clientId === "c-1"), 1);
				const list = await call(sa, "message:list", { conversationId: id });
				assert.equal(list.length, 1);
				// The same clientId from the other sender, or in another conversation, is a new message.
				assert.notEqual((await call(sb, "message:send", { conversationId: id, content: "mine", clientId: "c-1" })).id, first.id);
			});

			it("numbers messages 1, 2, 3 … without gaps or duplicates under concurrent senders", async () => {
				const [a, b] = [await newUser("sa"), await newUser("sb")];
				const [sa, sb] = [await connect(a), await connect(b)];
				const id = await privateChat(a, b, sa, sb);
				const sends = [];
				for (let i = 0; i < 15; i++) {
					sends.push(call(sa, "message:send", { conversationId: id, content: `a${i}`, clientId: `a${i}` }));
					sends.push(call(sb, "message:send", { conversationId: id, content: `b${i}`, clientId: `b${i}` }));
				}
				// and some retries racing the first sends
				for (let i = 0; i < 5; i++) sends.push(call(sa, "message:send", { conversationId: id, content: `a${i}`, clientId: `a${i}` }));
				const results = await Promise.all(sends);
				const seqs = [...new Set(results.map(m => m.seq))].sort((x, y) => x - y);
				assert.deepEqual(seqs, Array.from({ length: 30 }, (_, i) => i + 1));
				const history = await call(sa, "message:list", { conversationId: id, limit: 100 });
				assert.deepEqual(history.map((m: any) => m.seq), Array.from({ length: 30 }, (_, i) => 30 - i));
			});

			it("pages history by seq: newest first, before, and after (oldest first)", async () => {
				const [a, b] = [await newUser("ha"), await newUser("hb")];
				const [sa, sb] = [await connect(a), await connect(b)];
				const id = await privateChat(a, b, sa, sb);
				for (let i = 1; i <= 7; i++) await call(sa, "message:send", { conversationId: id, content: `m${i}` });
				const seqOf = (list: any[]) => list.map(m => m.seq);
				assert.deepEqual(seqOf(await call(sb, "message:list", { conversationId: id, limit: 3 })), [7, 6, 5]);
				assert.deepEqual(seqOf(await call(sb, "message:list", { conversationId: id, limit: 3, before: 5 })), [4, 3, 2]);
				assert.deepEqual(seqOf(await call(sb, "message:list", { conversationId: id, limit: 3, after: 4 })), [5, 6, 7]);
				const rest = await http(base, "GET", `/conversations/${id}/messages?limit=2&before=3`, { token: b.accessToken });
				assert.deepEqual(seqOf(rest.body), [2, 1]);
				const restAfter = await http(base, "GET", `/conversations/${id}/messages?after=6`, { token: b.accessToken });
				assert.deepEqual(seqOf(restAfter.body), [7]);
				assert.equal((await http(base, "GET", `/conversations/${id}/messages?limit=101`, { token: b.accessToken })).status, 400);
			});

			it("edits by the sender only, and deletes by the sender or a group manager", async () => {
				const [a, b] = [await newUser("ea"), await newUser("eb")];
				const [sa, sb] = [await connect(a), await connect(b)];
				const id = await privateChat(a, b, sa, sb);
				const msg = await call(sa, "message:send", { conversationId: id, content: "typo" });
				const edited = await call(sa, "message:edit", { messageId: msg.id, content: "fixed" });
				assert.equal(edited.content, "fixed");
				assert.ok(edited.edited_at);
				assert.equal((await waitForEvent(sb, "message:updated", p => p.id === msg.id)).content, "fixed");
				assertFail(await emitAck(sb, "message:edit", { messageId: msg.id, content: "hacked" }), "FORBIDDEN", "other edits");
				assertFail(await emitAck(sb, "message:delete", { messageId: msg.id }), "FORBIDDEN", "other deletes in private");
				assert.deepEqual(await emitAck(sa, "message:delete", { messageId: msg.id }), { ok: true });
				assert.deepEqual(await waitForEvent(sb, "message:deleted"), { messageId: msg.id, conversationId: id });
				const [tomb] = await call(sb, "message:list", { conversationId: id });
				assert.equal(tomb.deleted, true);
				assert.equal(tomb.content, "");
				assert.equal(tomb.seq, msg.seq);
				assertFail(await emitAck(sa, "message:edit", { messageId: msg.id, content: "undead" }), "CONFLICT", "edit a deleted message");

				// In a group, a moderator deletes a plain member's message.
				const [c] = [await newUser("ec")];
				const sc = await connect(c);
				const group = await call(sa, "conversation:create", { type: "group", participants: [b.id, c.id], name: "mods" });
				await call(sa, "conversation:promote-moderator", { conversationId: group.id, userId: b.id });
				const cm = await call(sc, "message:send", { conversationId: group.id, content: "spam" });
				assertFail(await emitAck(sc, "message:delete", { messageId: (await call(sa, "message:send", { conversationId: group.id, content: "admin says" })).id }), "FORBIDDEN", "member deletes admin's");
				assert.equal((await emitAck(sb, "message:delete", { messageId: cm.id })).ok, true);
			});

			it("derives unread counts from seq and read positions; read and delivered receipts reach everyone", async () => {
				const [a, b] = [await newUser("ua"), await newUser("ub")];
				const [sa, sb] = [await connect(a), await connect(b)];
				const id = await privateChat(a, b, sa, sb);
				const sent: any[] = [];
				for (let i = 0; i < 3; i++) sent.push(await call(sa, "message:send", { conversationId: id, content: `u${i}` }));
				assert.equal((await call(sb, "conversation:get", { conversationId: id })).unread_count, 3);
				assert.equal((await call(sa, "conversation:get", { conversationId: id })).unread_count, 0, "own messages are read");
				assert.deepEqual(await emitAck(sb, "message:delivered", { messageId: sent[2].id }), { ok: true });
				const delivered = await waitForEvent(sa, "message:status", p => p.status === "delivered");
				assert.equal(delivered.messageId, sent[2].id);
				assert.equal(delivered.userId, b.id);
				assert.deepEqual(await emitAck(sb, "message:read", { messageId: sent[1].id }), { ok: true });
				const read = await waitForEvent(sa, "message:read", p => p.messageId === sent[1].id);
				assert.equal(read.userId, b.id);
				assert.equal(read.conversationId, id);
				assert.ok(read.readAt);
				const status = await waitForEvent(sa, "message:status", p => p.status === "read");
				assert.equal(status.messageId, sent[1].id);
				assert.equal((await call(sb, "conversation:get", { conversationId: id })).unread_count, 1);
				const [seenMsg] = await call(sa, "message:list", { conversationId: id, before: 3, limit: 1 });
				assert.deepEqual(seenMsg.seen_by, [b.id]);
				assert.deepEqual(await call(sb, "conversation:mark-read", { conversationId: id }), { unread_count: 0 });
				assert.equal((await http(base, "GET", `/conversations/${id}`, { token: b.accessToken })).body.unread_count, 0);
				// Reading an older message never moves the position back.
				await call(sb, "message:read", { messageId: sent[0].id });
				assert.equal((await call(sb, "conversation:get", { conversationId: id })).unread_count, 0);
			});

			it("refuses empty and oversized content and foreign attachments", async () => {
				const [a, b] = [await newUser("za"), await newUser("zb")];
				const [sa, sb] = [await connect(a), await connect(b)];
				const id = await privateChat(a, b, sa, sb);
				assertFail(await emitAck(sa, "message:send", { conversationId: id, content: "   " }), "VALIDATION_ERROR", "blank");
				assertFail(await emitAck(sa, "message:send", { conversationId: id, content: "x".repeat(10_001) }), "VALIDATION_ERROR", "too long");
				assertFail(await emitAck(sa, "message:send", { conversationId: id, content: "x", attachments: ["https://evil.example/x.exe"] }), "VALIDATION_ERROR", "foreign url");
				assert.equal((await call(sa, "message:send", { conversationId: id, content: "x".repeat(10_000) })).content.length, 10_000);
			});
		});

		describe("typing, rooms and reconnects", () => {
			it("sends typing to the other sockets in conversation:<id>, never back to the sender", async () => {
				const [a, b, outsider] = [await newUser("ta"), await newUser("tb"), await newUser("tx")];
				const [sa, sb, so] = [await connect(a), await connect(b), await connect(outsider)];
				const id = await privateChat(a, b, sa, sb);
				assert.deepEqual(await emitAck(sa, "conversation:join", { conversationId: id }), { ok: true });
				assert.deepEqual(await emitAck(sb, "conversation:join", { conversationId: id }), { ok: true });
				assertFail(await emitAck(so, "conversation:join", { conversationId: id }), "NOT_FOUND", "outsider joins");
				assertFail(await emitAck(so, "typing", { conversationId: id, isTyping: true }), "NOT_FOUND", "outsider types");
				assert.deepEqual(await emitAck(sa, "typing", { conversationId: id, isTyping: true }), { ok: true });
				assert.deepEqual(await waitForEvent(sb, "typing"), { conversationId: id, userId: a.id, isTyping: true });
				// Throttled: the same state again at once is not sent on; a change is.
				await call(sa, "typing", { conversationId: id, isTyping: true });
				await call(sa, "typing", { conversationId: id, isTyping: false });
				await waitForEvent(sb, "typing", p => p.isTyping === false);
				await sleep(200);
				assert.equal(countEvents(sb, "typing"), 2);
				assert.equal(countEvents(sa, "typing"), 0);
				assert.equal(countEvents(so, "typing"), 0);
				assert.deepEqual(await emitAck(sb, "conversation:leave", { conversationId: id }), { ok: true });
				await sleep(1100);
				await call(sa, "typing", { conversationId: id, isTyping: true });
				await sleep(300);
				assert.equal(countEvents(sb, "typing"), 2, "left the room: no more typing");
			});

			it("a reconnecting client recovers what it missed with message:list { after: seq }", async () => {
				const [a, b] = [await newUser("ca"), await newUser("cb")];
				const [sa, sb] = [await connect(a), await connect(b)];
				const id = await privateChat(a, b, sa, sb);
				const seen = await call(sa, "message:send", { conversationId: id, content: "before" });
				await waitForEvent(sb, "message:created", p => p.id === seen.id);
				sb.close();
				for (let i = 0; i < 3; i++) await call(sa, "message:send", { conversationId: id, content: `missed ${i}` });
				const back = await connect(b);
				const missed = await call(back, "message:list", { conversationId: id, after: seen.seq });
				assert.deepEqual(missed.map((m: any) => m.content), ["missed 0", "missed 1", "missed 2"]);
				assert.deepEqual(missed.map((m: any) => m.seq), [seen.seq + 1, seen.seq + 2, seen.seq + 3]);
			});
		});

		describe("groups", () => {
			it("runs the whole group life: roles, members, system messages, hand-over and delete", async () => {
				const [a, b, c, d] = [await newUser("ga"), await newUser("gb"), await newUser("gc"), await newUser("gd")];
				const [sa, sb, sc, sd] = [await connect(a), await connect(b), await connect(c), await connect(d)];
				const group = await call(sa, "conversation:create", { type: "group", participants: [b.id, c.id], name: "Team" });
				assert.equal(group.type, "group");
				assert.equal(group.status, "accepted");
				assert.equal(group.admin_id, a.id);
				assert.equal(group.name, "Team");
				const created = await waitForEvent(sb, "message:created", p => p.conversation_id === group.id);
				assert.equal(created.type, "system");
				assert.equal(created.system_data.event, "group_created");

				// Plain members do not manage the group.
				assertFail(await emitAck(sb, "conversation:add-member", { conversationId: group.id, userId: d.id }), "FORBIDDEN", "plain adds");
				assertFail(await emitAck(sb, "conversation:update", { conversationId: group.id, name: "Mine" }), "FORBIDDEN", "plain renames");
				assertFail(await emitAck(sb, "conversation:promote-moderator", { conversationId: group.id, userId: c.id }), "FORBIDDEN", "plain promotes");

				// The admin adds d: d is invited, everyone hears of it, and a system message says so.
				const withD = await call(sa, "conversation:add-member", { conversationId: group.id, userId: d.id });
				assert.ok(withD.participants.includes(d.id));
				assert.equal((await waitForEvent(sd, "conversation:invited")).conversationId, group.id);
				for (const s of [sa, sb, sc, sd]) {
					assert.deepEqual(await waitForEvent(s, "members:added", p => p.userId === d.id), { conversationId: group.id, userId: d.id });
					await waitForEvent(s, "conversation:member-added", p => p.userId === d.id);
				}
				const addedMsg = await waitForEvent(sc, "message:created", p => p.system_data?.event === "member_added");
				assert.deepEqual(addedMsg.system_data, { event: "member_added", userId: d.id, actorId: a.id });
				// The new member starts with nothing unread and no old history.
				assert.equal((await call(sd, "conversation:get", { conversationId: group.id })).unread_count, 1);
				assert.deepEqual((await call(sd, "message:list", { conversationId: group.id })).map((m: any) => m.system_data?.event), ["member_added"]);

				// Moderators.
				await call(sa, "conversation:promote-moderator", { conversationId: group.id, userId: b.id });
				assert.deepEqual(await waitForEvent(sc, "conversation:moderator-updated"), { conversationId: group.id, userId: b.id, promoted: true });
				const renamed = await call(sb, "conversation:update", { conversationId: group.id, name: "Team 2" });
				assert.equal(renamed.name, "Team 2");
				assert.equal((await waitForEvent(sd, "conversation:updated", p => p.conversation.name === "Team 2")).conversationId, group.id);
				const picture = await upload(b);
				const avatar = await call(sb, "conversation:update-avatar", { conversationId: group.id, avatarUrl: picture });
				assert.equal(avatar.avatar, picture);
				assertFail(await emitAck(sb, "conversation:remove-member", { conversationId: group.id, userId: a.id }), "FORBIDDEN", "moderator removes admin");
				assertFail(await emitAck(sb, "conversation:demote-moderator", { conversationId: group.id, userId: b.id }), "FORBIDDEN", "moderator demotes");
				const withoutC = await call(sb, "conversation:remove-member", { conversationId: group.id, userId: c.id });
				assert.ok(!withoutC.participants.includes(c.id));
				for (const s of [sa, sc]) {
					assert.deepEqual(await waitForEvent(s, "members:removed", p => p.userId === c.id), { conversationId: group.id, userId: c.id });
					await waitForEvent(s, "conversation:member-removed", p => p.userId === c.id);
				}
				assertFail(await emitAck(sc, "message:send", { conversationId: group.id, content: "still here?" }), "NOT_FOUND", "removed member sends");
				assertFail(await emitAck(sc, "conversation:get", { conversationId: group.id }), "NOT_FOUND", "removed member reads");

				// The admin leaves: the moderator takes over.
				await call(sa, "conversation:promote-moderator", { conversationId: group.id, userId: d.id });
				await call(sa, "conversation:demote-moderator", { conversationId: group.id, userId: d.id });
				assert.deepEqual(await waitForEvent(sb, "conversation:moderator-updated", p => p.userId === d.id && p.promoted === false), { conversationId: group.id, userId: d.id, promoted: false });
				await call(sa, "conversation:remove-member", { conversationId: group.id, userId: a.id });
				const after = await call(sb, "conversation:get", { conversationId: group.id });
				assert.equal(after.admin_id, b.id);
				assert.deepEqual(after.moderator_ids, []);
				assert.deepEqual([...after.participants].sort(), [b.id, d.id].sort());
				await waitForEvent(sd, "message:created", p => p.system_data?.event === "admin_changed" && p.system_data.userId === b.id);

				// Only the admin deletes the group.
				assertFail(await emitAck(sd, "conversation:delete", { conversationId: group.id }), "FORBIDDEN", "member deletes");
				assert.deepEqual(await emitAck(sb, "conversation:delete", { conversationId: group.id }), { ok: true });
				assert.deepEqual(await waitForEvent(sd, "conversation:deleted"), { conversationId: group.id });
				assertFail(await emitAck(sd, "conversation:get", { conversationId: group.id }), "NOT_FOUND", "deleted group");
				assert.equal((await http(base, "GET", `/conversations/${group.id}/messages`, { token: b.accessToken })).status, 404);
			});

			it("REST: create a group, rename it (managers only), delete (admin only)", async () => {
				const [a, b] = [await newUser("rg"), await newUser("rh")];
				const res = await http(base, "POST", "/conversations", { token: a.accessToken, body: { participantIds: [b.id], isGroup: true, name: "REST group" } });
				assert.equal(res.status, 201);
				assert.equal(res.body.isGroup, true);
				assert.equal((await http(base, "PATCH", `/conversations/${res.body.id}`, { token: b.accessToken, body: { name: "x" } })).status, 403);
				const picture = await upload(a);
				const patched = await http(base, "PATCH", `/conversations/${res.body.id}`, { token: a.accessToken, body: { name: "Renamed", avatar: picture } });
				assert.equal(patched.status, 200);
				assert.equal(patched.body.name, "Renamed");
				assert.equal(patched.body.avatar, picture);
				assert.equal((await http(base, "DELETE", `/conversations/${res.body.id}`, { token: b.accessToken })).status, 403);
				assert.equal((await http(base, "DELETE", `/conversations/${res.body.id}`, { token: a.accessToken })).status, 204);
			});
		});

		describe("settings, nicknames, history, blocks, search", () => {
			it("keeps per-user mute (with muteUntil), pin and hide; deleting a private chat hides it for me only", async () => {
				const [a, b] = [await newUser("sa"), await newUser("sb")];
				const [sa, sb] = [await connect(a), await connect(b)];
				const id = await privateChat(a, b, sa, sb);
				const until = new Date(Date.now() + 3600_000).toISOString();
				assert.equal((await http(base, "POST", `/conversations/${id}/mute`, { token: a.accessToken, body: { muted: true, muteUntil: until } })).status, 204);
				assert.equal((await http(base, "POST", `/conversations/${id}/pin`, { token: a.accessToken, body: { pinned: true } })).status, 204);
				let settings = (await http(base, "GET", "/conversations/settings", { token: a.accessToken })).body;
				assert.deepEqual(settings[id], { muted: true, pinned: true, hidden: false, muteUntil: until });
				assert.equal((await http(base, "GET", "/conversations/settings", { token: b.accessToken })).body[id].muted, false);
				assert.equal((await http(base, "POST", `/conversations/${id}/mute`, { token: a.accessToken, body: { muted: "maybe" } })).status, 400);
				assert.equal((await http(base, "POST", `/conversations/${id}/hide`, { token: a.accessToken, body: { hidden: true } })).status, 204);
				assert.ok(!(await http(base, "GET", "/conversations", { token: a.accessToken })).body.some((c: any) => c.id === id));
				// A new message brings it back.
				await call(sb, "message:send", { conversationId: id, content: "ping" });
				assert.ok((await http(base, "GET", "/conversations", { token: a.accessToken })).body.some((c: any) => c.id === id));
				assert.equal((await http(base, "DELETE", `/conversations/${id}`, { token: a.accessToken })).status, 204);
				await waitForEvent(sa, "conversation:deleted", p => p.conversationId === id);
				assert.ok(!(await http(base, "GET", "/conversations", { token: a.accessToken })).body.some((c: any) => c.id === id));
				assert.ok((await http(base, "GET", "/conversations", { token: b.accessToken })).body.some((c: any) => c.id === id));
				settings = (await http(base, "GET", "/conversations/settings", { token: a.accessToken })).body;
				assert.equal(settings[id].hidden, true);
			});

			it("sets and lists nicknames; clears history for me only", async () => {
				const [a, b] = [await newUser("na"), await newUser("nb")];
				const [sa, sb] = [await connect(a), await connect(b)];
				const id = await privateChat(a, b, sa, sb);
				const set = await http(base, "POST", `/conversations/${id}/nicknames`, { token: a.accessToken, body: { targetUserId: b.id, nickname: "Bee" } });
				assert.equal(set.status, 200);
				assert.deepEqual(set.body, [{ target_user_id: b.id, targetUserId: b.id, nickname: "Bee" }]);
				assert.deepEqual((await http(base, "GET", `/conversations/${id}/nicknames`, { token: b.accessToken })).body, set.body);
				assert.equal((await http(base, "POST", `/conversations/${id}/nicknames`, { token: a.accessToken, body: { targetUserId: 99999999, nickname: "x" } })).status, 404);

				for (let i = 0; i < 3; i++) await call(sa, "message:send", { conversationId: id, content: `old ${i}` });
				assert.equal((await http(base, "DELETE", `/conversations/${id}/messages`, { token: a.accessToken })).status, 204);
				assert.deepEqual(await call(sa, "message:list", { conversationId: id }), []);
				assert.equal((await call(sb, "message:list", { conversationId: id })).length, 3);
				const fresh = await call(sb, "message:send", { conversationId: id, content: "new" });
				assert.deepEqual((await call(sa, "message:list", { conversationId: id })).map((m: any) => m.id), [fresh.id]);
			});

			it("blocking: the blocker's devices hear of it and the blocked cannot message them", async () => {
				const [a, b] = [await newUser("ba"), await newUser("bb")];
				const [sa, sa2, sb] = [await connect(a), await connect(a), await connect(b)];
				const id = await privateChat(a, b, sa, sb);
				assert.deepEqual(await emitAck(sa, "user:block", { targetUserId: b.id }), { ok: true });
				for (const s of [sa, sa2]) assert.deepEqual(await waitForEvent(s, "user:blocked"), { targetUserId: b.id });
				assertFail(await emitAck(sb, "message:send", { conversationId: id, content: "hey" }), "FORBIDDEN", "blocked sends");
				assertFail(await emitAck(sa, "message:send", { conversationId: id, content: "hey" }), "FORBIDDEN", "blocker sends");
				assert.deepEqual((await http(base, "GET", "/blocks", { token: a.accessToken })).body.map((x: any) => x.targetUserId), [b.id]);
				assertFail(await emitAck(sa, "user:block", { targetUserId: a.id }), "BAD_REQUEST", "block self");
				// In a group (made by someone with no block) the blocker does not get the blocked user's messages live.
				const c = await newUser("bc");
				const group = (await http(base, "POST", "/conversations", { token: c.accessToken, body: { type: "group", participants: [a.id, b.id] } })).body;
				const gm = await call(sb, "message:send", { conversationId: group.id, content: "group hello" });
				await sleep(300);
				assert.equal(countEvents(sa, "message:created", p => p.id === gm.id), 0);
				assert.deepEqual(await emitAck(sa, "user:unblock", { targetUserId: b.id }), { ok: true });
				await waitForEvent(sa2, "user:unblocked");
				assert.equal((await call(sb, "message:send", { conversationId: id, content: "friends again" })).content, "friends again");
			});

			it("searches only the conversations the caller belongs to", async () => {
				const [a, b, c] = [await newUser("qa"), await newUser("qb"), await newUser("qc")];
				const [sa, sb, sc] = [await connect(a), await connect(b), await connect(c)];
				const ab = await privateChat(a, b, sa, sb);
				const bc = await privateChat(b, c, sb, sc);
				const word = `zebra${Date.now().toString(36)}`;
				await call(sa, "message:send", { conversationId: ab, content: `the ${word} in ab` });
				await call(sb, "message:send", { conversationId: bc, content: `the ${word.toUpperCase()} in bc` });
				await call(sb, "message:send", { conversationId: bc, content: "a (regex) [chars] .*" });
				const forB = await call(sb, "message:search", { query: word });
				assert.equal(forB.total, 2);
				const forA = await call(sa, "message:search", { query: word });
				assert.equal(forA.total, 1);
				assert.equal(forA.messages[0].conversation_id, ab);
				assert.equal((await call(sa, "message:search", { query: word, conversationId: ab })).total, 1);
				assertFail(await emitAck(sa, "message:search", { query: word, conversationId: bc }), "NOT_FOUND", "search a foreign conversation");
				assert.equal((await call(sb, "message:search", { query: "(regex) [chars] .*" })).total, 1, "the query is literal");
				// The REST twin answers the same.
				const rest = await http(base, "GET", `/messages/search?query=${word}&limit=5`, { token: b.accessToken });
				assert.equal(rest.status, 200);
				assert.equal(rest.body.total, 2);
				assert.deepEqual(rest.body.messages.map((m: { id: string }) => m.id).sort(), forB.messages.map((m: { id: string }) => m.id).sort());
				assert.equal((await http(base, "GET", `/messages/search?query=${word}&conversationId=${bc}`, { token: a.accessToken })).status, 404);
				assert.equal((await http(base, "GET", "/messages/search", { token: a.accessToken })).status, 400);
				assert.equal((await http(base, "GET", `/messages/search?query=${word}`)).status, 401);
			});

			it("pages the conversation list by last activity with X-Next-Cursor", async () => {
				const a = await newUser("la");
				const sa = await connect(a);
				const others = [];
				for (let i = 0; i < 5; i++) others.push(await newUser(`lo${i}`));
				const ids: string[] = [];
				for (const o of others) {
					const conv = await call(sa, "conversation:create", { type: "private", participants: [o.id] });
					ids.push(conv.id);
					await call(sa, "message:send", { conversationId: conv.id, content: "hi" });
					await sleep(5);
				}
				const seen: string[] = [];
				let cursor: string | null = null;
				for (let page = 0; page < 5; page++) {
					const res: Awaited<ReturnType<typeof http>> = await http(base, "GET", `/conversations?limit=2${cursor ? `&before=${encodeURIComponent(cursor)}` : ""}`, { token: a.accessToken });
					assert.equal(res.status, 200);
					seen.push(...(res.body as any[]).map(c => c.id));
					cursor = res.headers.get("x-next-cursor");
					if (!cursor) break;
				}
				assert.deepEqual(seen, [...ids].reverse(), "newest activity first, each once");
				assert.equal((await http(base, "GET", "/conversations?before=garbage", { token: a.accessToken })).status, 400);
				const viaSocket = await call(sa, "conversation:list", { limit: 3 });
				assert.deepEqual(viaSocket.map((c: any) => c.id), [...ids].reverse().slice(0, 3));
			});
		});

		describe("blocks hold everywhere", () => {
			it("refuses a group with someone who blocked the creator or whom it blocked, over the socket and REST, and makes nothing", async () => {
				const [a, b, c, d] = [await newUser("gka"), await newUser("gkb"), await newUser("gkc"), await newUser("gkd")];
				const [sa, sb, sc] = [await connect(a), await connect(b), await connect(c)];
				await call(sb, "user:block", { targetUserId: a.id }); // b blocked a
				await call(sa, "user:block", { targetUserId: d.id }); // a blocked d
				assertFail(await emitAck(sa, "conversation:create", { type: "group", participants: [b.id, c.id], name: "no" }), "FORBIDDEN", "with one who blocked me");
				assertFail(await emitAck(sa, "conversation:create", { type: "group", participants: [c.id, d.id], name: "no" }), "FORBIDDEN", "with one I blocked");
				for (const others of [[c.id, b.id], [d.id, c.id]]) {
					const rest = await http(base, "POST", "/conversations", { token: a.accessToken, body: { participantIds: others, isGroup: true, name: "no" } });
					assert.equal(rest.status, 403, rest.text);
					assert.equal(rest.body.code, "FORBIDDEN");
				}
				// Nothing was made: c hears only of the group made next, and lists only that one;
				// b hears of none (its unblock, pushed after all of them, arrives alone).
				const fine = await call(sa, "conversation:create", { type: "group", participants: [c.id], name: "fine" });
				await waitForEvent(sc, "conversation:created", p => p.conversationId === fine.id);
				assert.equal(countEvents(sc, "conversation:created"), 1);
				assert.deepEqual((await http(base, "GET", "/conversations", { token: c.accessToken })).body.map((x: any) => x.id), [fine.id]);
				await call(sb, "user:unblock", { targetUserId: a.id });
				await waitForEvent(sb, "user:unblocked");
				assert.equal(countEvents(sb, "conversation:created"), 0);
				assert.equal(countEvents(sb, "message:created"), 0);
			});

			it("in a group, the blocker gets no edits, deletions or typing of the blocked user, and receipts reach nobody with a block either way", async () => {
				const [a, b, c] = [await newUser("gva"), await newUser("gvb"), await newUser("gvc")];
				const [sa, sb, sc] = [await connect(a), await connect(b), await connect(c)];
				const group = await call(sc, "conversation:create", { type: "group", participants: [a.id, b.id], name: "g" });
				await call(sa, "user:block", { targetUserId: b.id }); // a blocked b
				for (const s of [sa, sb, sc]) await call(s, "conversation:join", { conversationId: group.id });
				const fromB = await call(sb, "message:send", { conversationId: group.id, content: "from b" });
				const fromC = await call(sc, "message:send", { conversationId: group.id, content: "from c" });
				for (const s of [sa, sb]) await waitForEvent(s, "message:created", p => p.id === fromC.id);

				await call(sb, "message:edit", { messageId: fromB.id, content: "from b, edited" });
				await call(sb, "typing", { conversationId: group.id, isTyping: true });
				await call(sa, "typing", { conversationId: group.id, isTyping: true });
				await call(sa, "message:delivered", { messageId: fromC.id });
				await call(sa, "message:read", { messageId: fromC.id });
				await call(sb, "message:read", { messageId: fromC.id });
				await call(sa, "message:read", { messageId: fromB.id });
				await call(sb, "message:delete", { messageId: fromB.id });
				const fromC2 = await call(sc, "message:send", { conversationId: group.id, content: "again from c" });
				for (const s of [sa, sb]) await waitForEvent(s, "message:created", p => p.id === fromC2.id);
				await call(sb, "conversation:mark-read", { conversationId: group.id });
				await call(sa, "conversation:mark-read", { conversationId: group.id });

				// c, with no block, gets all of it: these events were sent.
				assert.equal((await waitForEvent(sc, "message:updated", p => p.id === fromB.id)).content, "from b, edited");
				await waitForEvent(sc, "message:deleted", p => p.messageId === fromB.id);
				for (const u of [a, b]) {
					await waitForEvent(sc, "typing", p => p.userId === u.id);
					await waitForEvent(sc, "message:read", p => p.userId === u.id && p.messageId === fromC.id);
					await waitForEvent(sc, "message:read", p => p.userId === u.id && p.messageId === fromC2.id);
				}
				await waitForEvent(sc, "message:status", p => p.userId === a.id && p.status === "delivered");

				// A last message from c reaches a and b after everything above: what they got before it is all they get.
				const marker = await call(sc, "message:send", { conversationId: group.id, content: "marker" });
				for (const s of [sa, sb]) await waitForEvent(s, "message:created", p => p.id === marker.id);
				assert.equal(countEvents(sa, "message:updated"), 0, "the blocker gets the blocked user's edit");
				assert.equal(countEvents(sa, "message:deleted"), 0, "the blocker gets the blocked user's deletion");
				assert.equal(countEvents(sa, "typing"), 0, "the blocker gets the blocked user's typing");
				assert.equal(countEvents(sa, "message:read", p => p.userId === b.id) + countEvents(sa, "message:status", p => p.userId === b.id), 0, "the blocker gets the blocked user's receipts");
				assert.equal(countEvents(sb, "typing"), 0, "the blocked user gets the blocker's typing");
				assert.equal(countEvents(sb, "message:read", p => p.userId === a.id) + countEvents(sb, "message:status", p => p.userId === a.id), 0, "the blocked user gets the blocker's receipts");
				assert.equal(countEvents(sb, "message:updated", p => p.id === fromB.id), 1, "b hears its own edit");

				// History shows receipts the same way.
				const seenBy = async (s: TestSocket) => (await call(s, "message:list", { conversationId: group.id })).find((m: any) => m.id === fromC.id).seen_by;
				assert.deepEqual([...(await seenBy(sc))].sort(), [a.id, b.id].sort());
				assert.deepEqual(await seenBy(sa), [a.id]);
				assert.deepEqual(await seenBy(sb), [b.id]);
			});

			it("in a private chat a block also stops edits, nicknames and answering a request, and tells the blocker nothing", async () => {
				const [a, b, c] = [await newUser("gpa"), await newUser("gpb"), await newUser("gpc")];
				const [sa, sb, sc] = [await connect(a), await connect(b), await connect(c)];
				const id = await privateChat(a, b, sa, sb);
				const fromB = await call(sb, "message:send", { conversationId: id, content: "from b" });
				const fromA = await call(sa, "message:send", { conversationId: id, content: "from a" });
				await waitForEvent(sb, "message:created", p => p.id === fromA.id);
				await call(sa, "user:block", { targetUserId: b.id });
				assertFail(await emitAck(sb, "message:edit", { messageId: fromB.id, content: "but listen" }), "FORBIDDEN", "blocked edits");
				assertFail(await emitAck(sa, "message:edit", { messageId: fromA.id, content: "and you" }), "FORBIDDEN", "blocker edits");
				for (const [u, target] of [[b, a], [b, b], [a, b]] as const) {
					const res = await http(base, "POST", `/conversations/${id}/nicknames`, { token: u.accessToken, body: { targetUserId: target.id, nickname: "name" } });
					assert.equal(res.status, 403, `${u.username} names ${target.username}: ${res.text}`);
				}
				await call(sb, "message:delivered", { messageId: fromA.id });
				await call(sb, "message:read", { messageId: fromA.id });
				await call(sb, "conversation:mark-read", { conversationId: id });
				await call(sa, "user:unblock", { targetUserId: b.id }); // pushed to a after all of the above
				await waitForEvent(sa, "user:unblocked");
				assert.equal(countEvents(sa, "message:read") + countEvents(sa, "message:status"), 0, "the blocker gets receipts of the blocked user");
				assert.equal(countEvents(sa, "conversation:updated", p => p.conversationId === id && Object.keys(p.conversation.nicknames).length > 0), 0);
				assert.deepEqual((await call(sa, "conversation:get", { conversationId: id })).nicknames, {});
				assert.equal((await call(sa, "message:list", { conversationId: id })).find((m: any) => m.id === fromB.id).content, "from b", "the edit was not stored");

				// A request from c, who then blocked a: a cannot accept it; it can decline, and c hears nothing of it.
				const request = await call(sc, "conversation:create", { type: "private", participants: [a.id] });
				await call(sc, "user:block", { targetUserId: a.id });
				assertFail(await emitAck(sa, "conversation:accept", { conversationId: request.id }), "FORBIDDEN", "accept with a block");
				assert.equal((await call(sa, "conversation:decline", { conversationId: request.id })).status, "declined");
				await call(sc, "user:unblock", { targetUserId: a.id });
				await waitForEvent(sc, "user:unblocked");
				assert.equal(countEvents(sc, "request:accepted") + countEvents(sc, "request:declined"), 0);
				assert.equal(countEvents(sc, "conversation:updated", p => p.conversationId === request.id), 0);
			});

			it("tells the users service which users have a block with someone, either way", async () => {
				const [a, b, c, d] = [await newUser("gra"), await newUser("grb"), await newUser("grc"), await newUser("grd")];
				const [sa, sd] = [await connect(a), await connect(d)];
				await call(sa, "user:block", { targetUserId: b.id });
				await call(sd, "user:block", { targetUserId: a.id });
				const related = await sys.broker.call<number[], unknown>("conversations.blockRelations", { userId: a.id, others: [b.id, c.id, d.id, a.id] });
				assert.deepEqual([...related].sort((x, y) => x - y), [b.id, d.id].sort((x, y) => x - y));
				assert.deepEqual(await sys.broker.call("conversations.blockRelations", { userId: c.id, others: [a.id, b.id, d.id] }), []);
				assert.deepEqual(await sys.broker.call("conversations.blockRelations", { userId: b.id, others: [] }), []);
				await assert.rejects(sys.broker.call("conversations.blockRelations", { userId: a.id, others: ["x"] }), (err: any) => err.name === "ValidationError");
			});
		});

		describe("deleted accounts", () => {
			it("a deleted account's still-valid token sends, types and lists nothing, and its contacts are told it no longer exists", async () => {
				const [a, b, c] = [await newUser("dla"), await newUser("dlb"), await newUser("dlc")];
				const [sa, sb, sc] = [await connect(a), await connect(b), await connect(c)];
				const id = await privateChat(a, b, sa, sb);
				const group = await call(sb, "conversation:create", { type: "group", participants: [a.id, c.id], name: "g" });
				await call(sa, "conversation:join", { conversationId: id });
				await call(sa, "typing", { conversationId: id, isTyping: true }); // its membership is now known to typing
				await call(sa, "message:send", { conversationId: id, content: "last words" });
				assert.equal((await http(base, "DELETE", `/users/${a.id}`, { token: a.accessToken })).status, 204);
				await waitForEvent(sc, "message:created", p => p.conversation_id === group.id && p.system_data?.event === "member_left");
				// Its private chat membership goes too (the private chat itself stays for b).
				await waitFor(() => asUser(a, "conversations.get", { conversationId: id }).then(() => false, (err: any) => err.type === "NOT_FOUND"));

				const refused = (code: string) => (err: any) => err.type === code;
				await assert.rejects(asUser(a, "messages.send", { conversationId: id, content: "from beyond" }), refused("NOT_FOUND"));
				await assert.rejects(asUser(a, "conversations.typing", { conversationId: id, isTyping: false }), refused("NOT_FOUND"));
				await assert.rejects(asUser(a, "conversations.create", { type: "private", participants: [c.id] }), refused("UNAUTHORIZED"));
				await assert.rejects(asUser(a, "conversations.create", { type: "group", participants: [c.id] }), refused("UNAUTHORIZED"));
				await assert.rejects(asUser(a, "conversations.block", { targetUserId: c.id }), refused("UNAUTHORIZED"));
				assert.deepEqual(await asUser(a, "conversations.list", {}), []);
				assert.deepEqual(await asUser(a, "conversations.requests", {}), []);
				// Over the gateway too, whatever refuses it first (the token or the chat services).
				const rest = await http(base, "POST", `/conversations/${id}/messages`, { token: a.accessToken, body: { content: "from beyond" } });
				assert.ok([401, 404].includes(rest.status), rest.text);

				// b keeps the history, and is told why it cannot write.
				const ack = await emitAck(sb, "message:send", { conversationId: id, content: "are you there?" });
				assertFail(ack, "FORBIDDEN", "send to a deleted account");
				assert.equal(ack.error?.message, "This account no longer exists");
				assert.deepEqual((await call(sb, "message:list", { conversationId: id })).map((m: any) => m.content), ["last words"]);
				assert.ok((await http(base, "GET", "/conversations", { token: b.accessToken })).body.some((x: any) => x.id === id));
				// Nothing in c's conversation list came from a.
				assert.ok(!(await http(base, "GET", "/conversations", { token: c.accessToken })).body.some((x: any) => x.participants.includes(a.id)));
			});
		});

		describe("group pictures and file references", () => {
			it("takes as a group picture only an image the caller uploaded here, as /files/<id>; anything else is refused and changes nothing", async () => {
				const [a, b, c] = [await newUser("fpa"), await newUser("fpb"), await newUser("fpc")];
				const [sa, sc] = [await connect(a), await connect(c)];
				const mine = await upload(a);
				const mine2 = await upload(a);
				const theirs = await upload(b);
				const pdf = await upload(a, PDF, "doc.pdf");
				const fileId = mine.slice("/files/".length);
				const malformed = ["https://tracker.example/pixel.png", "/files/abc123", `${mine}/x`, `${mine}?x=1`, `http://127.0.0.1/files/${fileId}`, `/files/${fileId.toUpperCase()}`, fileId, "javascript:alert(1)"];
				for (const avatar of malformed) {
					const ack = await emitAck(sa, "conversation:create", { type: "group", participants: [c.id], name: "pic", avatar });
					assertFail(ack, "VALIDATION_ERROR", avatar);
					assert.equal((ack.error?.details as any[])[0].field, "avatar", avatar);
				}
				assertFail(await emitAck(sa, "conversation:create", { type: "group", participants: [c.id], avatar: theirs }), "FORBIDDEN", "someone else's upload");
				assertFail(await emitAck(sa, "conversation:create", { type: "group", participants: [c.id], avatar: pdf }), "VALIDATION_ERROR", "not an image");
				assertFail(await emitAck(sa, "conversation:create", { type: "group", participants: [c.id], avatar: `/files/${"0".repeat(32)}` }), "VALIDATION_ERROR", "no such file");
				const restBad = await http(base, "POST", "/conversations", { token: a.accessToken, body: { participantIds: [c.id], isGroup: true, avatar: "https://tracker.example/p.png" } });
				assert.equal(restBad.status, 400);
				assert.equal(restBad.body.code, "VALIDATION_ERROR");

				// None of those made a group: c hears only of this one.
				const group = await call(sa, "conversation:create", { type: "group", participants: [c.id], name: "pic", avatar: mine });
				assert.equal(group.avatar, mine);
				await waitForEvent(sc, "conversation:created", p => p.conversationId === group.id);
				assert.equal(countEvents(sc, "conversation:created"), 1);

				// update and update-avatar refuse the same, and change nothing (not even the name given with it).
				for (const avatar of [...malformed.slice(0, 3), theirs, pdf]) {
					const res = await http(base, "PATCH", `/conversations/${group.id}`, { token: a.accessToken, body: { avatar, name: "changed?" } });
					assert.ok([400, 403].includes(res.status), `${avatar}: ${res.text}`);
					assert.equal((await emitAck(sa, "conversation:update-avatar", { conversationId: group.id, avatarUrl: avatar })).ok, false, avatar);
				}
				let now = await call(sa, "conversation:get", { conversationId: group.id });
				assert.equal(now.avatar, mine);
				assert.equal(now.name, "pic");

				// A moderator renames the group without touching the picture a's upload is; it cannot put a's other upload there.
				await call(sa, "conversation:promote-moderator", { conversationId: group.id, userId: c.id });
				const renamed = await http(base, "PATCH", `/conversations/${group.id}`, { token: c.accessToken, body: { name: "renamed", avatar: mine } });
				assert.equal(renamed.status, 200, renamed.text);
				assert.equal(renamed.body.avatar, mine);
				assertFail(await emitAck(sc, "conversation:update-avatar", { conversationId: group.id, avatarUrl: mine2 }), "FORBIDDEN", "moderator uses a's upload");
				assert.equal((await call(sa, "conversation:update-avatar", { conversationId: group.id, avatarUrl: mine2 })).avatar, mine2);
				assert.equal((await call(sa, "conversation:update-avatar", { conversationId: group.id, avatarUrl: null })).avatar, null);
				// (A replaced picture may be gone by now: the files service deletes what nothing uses.)
				const mine3 = await upload(a);
				const again = await http(base, "PATCH", `/conversations/${group.id}`, { token: a.accessToken, body: { avatar: mine3 } });
				assert.equal(again.body.avatar, mine3, again.text);
				assert.equal((await http(base, "PATCH", `/conversations/${group.id}`, { token: a.accessToken, body: { avatar: "" } })).body.avatar, null);
				now = await call(sc, "conversation:get", { conversationId: group.id });
				assert.equal(now.avatar, null);
			});

			it("answers the files service which files are still attached to a message or some group's picture", async () => {
				const [a, b] = [await newUser("fra"), await newUser("frb")];
				const [sa, sb] = [await connect(a), await connect(b)];
				const id = await privateChat(a, b, sa, sb);
				const [f1, f2, f3, f4] = [await upload(a), await upload(a), await upload(a), await upload(a)];
				const idOf = (url: string) => url.slice("/files/".length);
				const all = [f1, f2, f3, f4].map(idOf);
				const refs = async (action: string) => [...(await sys.broker.call<string[], unknown>(action, { fileIds: all }))].sort();
				const m1 = await call(sa, "message:send", { conversationId: id, attachments: [f1] });
				const m2 = await call(sa, "message:send", { conversationId: id, content: "two", attachments: [f1, f2] });
				assert.deepEqual(m2.attachments, [f1, f2]);
				assert.deepEqual(await refs("messages.fileRefs"), [idOf(f1), idOf(f2)].sort());
				assert.deepEqual(await refs("conversations.fileRefs"), []);
				await call(sa, "message:delete", { messageId: m2.id });
				assert.deepEqual(await refs("messages.fileRefs"), [idOf(f1)], "f1 is still on m1");
				await call(sa, "message:delete", { messageId: m1.id });
				assert.deepEqual(await refs("messages.fileRefs"), []);

				// A group's picture, and the attachments of a group's messages until the group is deleted.
				const group = await call(sa, "conversation:create", { type: "group", participants: [b.id], name: "refs", avatar: f3 });
				assert.deepEqual(await refs("conversations.fileRefs"), [idOf(f3)]);
				await call(sa, "message:send", { conversationId: group.id, content: "pic", attachments: [f4] });
				assert.deepEqual(await refs("messages.fileRefs"), [idOf(f4)]);
				assert.deepEqual(await emitAck(sa, "conversation:delete", { conversationId: group.id }), { ok: true });
				assert.deepEqual(await refs("messages.fileRefs"), []);
				assert.deepEqual(await refs("conversations.fileRefs"), []);

				await assert.rejects(sys.broker.call("messages.fileRefs", { fileIds: ["../../etc/passwd"] }), (err: any) => err.name === "ValidationError");
				await assert.rejects(sys.broker.call("conversations.fileRefs", { fileIds: [{ $ne: null }] }), (err: any) => err.name === "ValidationError");
			});
		});

		describe("authorization and bad payloads", () => {
			it("a non-member gets NOT_FOUND for everything about a conversation, never its data", async () => {
				const [a, b, x] = [await newUser("xa"), await newUser("xb"), await newUser("xx")];
				const [sa, sb, sx] = [await connect(a), await connect(b), await connect(x)];
				const id = await privateChat(a, b, sa, sb);
				const msg = await call(sa, "message:send", { conversationId: id, content: "secret" });
				const attempts: [string, unknown][] = [
					["conversation:get", { conversationId: id }],
					["conversation:join", { conversationId: id }],
					["conversation:accept", { conversationId: id }],
					["conversation:decline", { conversationId: id }],
					["conversation:add-member", { conversationId: id, userId: x.id }],
					["conversation:remove-member", { conversationId: id, userId: a.id }],
					["conversation:update", { conversationId: id, name: "mine" }],
					["conversation:delete", { conversationId: id }],
					["conversation:mark-read", { conversationId: id }],
					["message:send", { conversationId: id, content: "intrude" }],
					["message:list", { conversationId: id }],
					["message:edit", { messageId: msg.id, content: "x" }],
					["message:delete", { messageId: msg.id }],
					["message:read", { messageId: msg.id }],
					["message:delivered", { messageId: msg.id }],
					["typing", { conversationId: id, isTyping: true }],
				];
				for (const [event, payload] of attempts) {
					const ack = await emitAck(sx, event, payload);
					assertFail(ack, "NOT_FOUND", event);
					assert.ok(!JSON.stringify(ack).includes("secret"), `${event} leaks`);
				}
				for (const [method, path] of [
					["GET", `/conversations/${id}`],
					["GET", `/conversations/${id}/messages`],
					["POST", `/conversations/${id}/messages`],
					["GET", `/conversations/${id}/nicknames`],
					["POST", `/conversations/${id}/mute`],
					["DELETE", `/conversations/${id}/messages`],
				]) {
					const res = await http(base, method, path, { token: x.accessToken, body: method === "POST" ? { content: "x", muted: true } : undefined });
					assert.equal(res.status, 404, `${method} ${path}`);
				}
				assert.equal((await http(base, "GET", `/conversations/${id}`)).status, 401);
				assert.equal((await call(sa, "message:list", { conversationId: id }))[0].content, "secret", "nothing was changed");
			});

			it("answers every malformed payload with an ok:false ack and keeps the socket usable", async () => {
				const [a, b] = [await newUser("fa"), await newUser("fb")];
				const [sa, sb] = [await connect(a), await connect(b)];
				const id = await privateChat(a, b, sa, sb);
				const events = [
					"conversation:create", "conversation:list", "conversation:get", "conversation:join", "conversation:leave", "conversation:accept",
					"conversation:decline", "conversation:add-member", "conversation:remove-member", "conversation:promote-moderator",
					"conversation:demote-moderator", "conversation:update", "conversation:update-avatar", "conversation:delete",
					"conversation:mark-read", "message:send", "message:edit", "message:delete", "message:read", "message:delivered",
					"message:list", "message:search", "typing", "user:block", "user:unblock",
				];
				const payloads: unknown[] = ["a string", 42, [1, 2], { conversationId: { $ne: null } }, { conversationId: 12, messageId: [], userId: "x", targetUserId: -1, content: {}, query: 5, limit: "many", isTyping: "yes", participants: "1" }];
				for (const event of events) {
					for (const payload of payloads) {
						const ack = await emitAck(sa, event, payload);
						if (event === "conversation:list" && typeof payload === "object" && !Array.isArray(payload) && !("limit" in (payload as object))) continue;
						assert.equal(ack.ok, false, `${event} ${JSON.stringify(payload)} was accepted`);
						assert.ok(["VALIDATION_ERROR", "BAD_REQUEST"].includes(ack.error!.code), `${event} ${JSON.stringify(payload)}: ${JSON.stringify(ack.error)}`);
					}
				}
				// No ack callback at all, or an unknown event: nothing breaks.
				sa.emit("message:send", { conversationId: id, content: "no ack" });
				sa.emit("no:such-event", { x: 1 });
				await waitForEvent(sb, "message:created", p => p.content === "no ack");
				assert.ok(sa.connected);
				assert.equal((await call(sa, "message:send", { conversationId: id, content: "still fine" })).content, "still fine");
			});
		});
	});
}
