/**
 * Reactions, replies and threads, pins and mention parsing (contract v1.1) against the real
 * gateway, services and sockets, on the embedded document store and on MongoDB (FerretDB in CI).
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { MessageDoc } from "../../lib/chat";
import { type DocsMixinThis, resetStoreOps, storeOps } from "../../mixins/docs.mixin";
import { call, connectSocket, countEvents, emitAck, sleep, type TestSocket, waitForEvent } from "../helpers/sockets";
import { http, registerUser, startBroker, type RunningSystem, storeTestEnv } from "../helpers/system";

type User = Awaited<ReturnType<typeof registerUser>>;

function assertFail(ack: { ok: boolean; error?: { code: string; details?: unknown } }, code: string, label = "") {
	assert.equal(ack.ok, false, `${label}: expected ${code}, got ok`);
	assert.equal(ack.error?.code, code, `${label}: ${JSON.stringify(ack.error)}`);
}

export function runMessagingSuite(mode: "embedded" | "mongo", mongoUrl: string | null, skip: string | false = false) {
	describe(`reactions, replies, pins and mentions (${mode})`, { skip }, () => {
		let sys: RunningSystem;
		let base: string;
		const sockets: TestSocket[] = [];

		const newUser = (p: string) => registerUser(base, p);
		const connect = async (u: User) => {
			const s = await connectSocket(base, u.accessToken);
			sockets.push(s);
			return s;
		};
		/** An accepted private chat between a and b; its id. */
		const privateChat = async (sa: TestSocket, sb: TestSocket, b: User) => {
			const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
			await call(sb, "conversation:accept", { conversationId: conv.id });
			return conv.id as string;
		};
		const send = (s: TestSocket, conversationId: string, content: string, extra: Record<string, unknown> = {}) => call(s, "message:send", { conversationId, content, ...extra });
		const store = () => (sys.broker.getLocalService("messages") as unknown as DocsMixinThis<"messages" | "reactions">).stores;
		/** A later call on the socket works: the refusal before it left the socket connected. */
		const stillConnected = async (s: TestSocket, conversationId: string) => {
			assert.equal(s.connected, true);
			assert.ok(Array.isArray(await call(s, "message:list", { conversationId, limit: 1 })));
		};

		before(async () => {
			storeTestEnv("messaging-suite-secret-0123456789", mongoUrl);
			sys = await startBroker(["api", "users", "conversations", "messages"]);
			base = sys.baseUrl;
		});

		after(async () => {
			for (const s of sockets) s.close();
			await sys?.stop();
		});

		describe("reactions", () => {
			it("react and unreact: the summary with `me`, message:reactions to the other side, repeats change nothing", async () => {
				const [a, b] = [await newUser("ra"), await newUser("rb")];
				const [sa, sb] = [await connect(a), await connect(b)];
				const id = await privateChat(sa, sb, b);
				const msg = await send(sa, id, "react to me");
				// A message that never had a reaction shows the defaults of the new fields.
				for (const field of ["reactions", "mentions"]) assert.deepEqual(msg[field], []);
				assert.equal(msg.reply_to, null);
				assert.equal(msg.reply_count, 0);
				assert.equal(msg.pinned_at, null);
				assert.equal(msg.pinned_by, null);

				const reacted = await call(sb, "message:react", { messageId: msg.id, emoji: "👍" });
				assert.equal(reacted.id, msg.id);
				assert.deepEqual(reacted.reactions, [{ emoji: "👍", count: 1, user_ids: [b.id], me: true }]);
				const ev = await waitForEvent(sa, "message:reactions", p => p.messageId === msg.id);
				assert.deepEqual(ev, { conversationId: id, messageId: msg.id, reactions: [{ emoji: "👍", count: 1, user_ids: [b.id] }] });
				// Again: nothing changes, nobody is told again.
				assert.deepEqual((await call(sb, "message:react", { messageId: msg.id, emoji: "👍" })).reactions, reacted.reactions);
				// The other side sees it in history, with `me` its own.
				const [listed] = await call(sa, "message:list", { conversationId: id, limit: 1 });
				assert.deepEqual(listed.reactions, [{ emoji: "👍", count: 1, user_ids: [b.id], me: false }]);
				const both = await call(sa, "message:react", { messageId: msg.id, emoji: "👍" });
				assert.deepEqual(both.reactions, [{ emoji: "👍", count: 2, user_ids: [b.id, a.id], me: true }]);
				// A second emoji comes after the first; a shortcode is lowered.
				const party = await call(sa, "message:react", { messageId: msg.id, emoji: ":Party:" });
				assert.deepEqual(party.reactions.map((r: any) => r.emoji), ["👍", ":party:"]);

				const undone = await call(sb, "message:unreact", { messageId: msg.id, emoji: "👍" });
				assert.deepEqual(undone.reactions[0], { emoji: "👍", count: 1, user_ids: [a.id], me: false });
				await waitForEvent(sa, "message:reactions", p => p.messageId === msg.id && p.reactions[0].count === 1 && p.reactions[0].user_ids[0] === a.id);
				// Unreacting what one has not: the message, no event.
				assert.equal((await call(sb, "message:unreact", { messageId: msg.id, emoji: "👍" })).id, msg.id);
				assert.equal((await call(sb, "message:unreact", { messageId: msg.id, emoji: "🙂" })).id, msg.id);
				await sleep(300);
				assert.equal(countEvents(sa, "message:reactions", p => p.messageId === msg.id), 4, "react b, react a, :party:, unreact b");
				assert.equal(countEvents(sb, "message:reactions", p => p.messageId === msg.id), 4);
				// One stored document per (message, user, emoji).
				assert.equal(await store().reactions.count({ message_id: msg.id }), 2);
			});

			it("counts two users reacting with the same emoji at the same instant, and one user's double click once", async () => {
				const users = [await newUser("ca"), await newUser("cb"), await newUser("cc"), await newUser("cd"), await newUser("ce")];
				const socks = await Promise.all(users.map(u => connect(u)));
				const group = await call(socks[0], "conversation:create", { type: "group", participants: users.slice(1).map(u => u.id), name: "race" });
				const msg = await send(socks[0], group.id, "race on me");
				for (let round = 0; round < 3; round++) {
					const emoji = ["🔥", "🎉", "💯"][round];
					const acks = await Promise.all(socks.map(s => emitAck(s, "message:react", { messageId: msg.id, emoji })));
					assert.ok(acks.every(x => x.ok), JSON.stringify(acks.find(x => !x.ok)));
				}
				// The same user on two devices at once: one reaction.
				const extra = await connect(users[1]);
				await Promise.all([call(socks[1], "message:react", { messageId: msg.id, emoji: "👀" }), call(extra, "message:react", { messageId: msg.id, emoji: "👀" })]);
				const [listed] = await call(socks[2], "message:list", { conversationId: group.id, limit: 1 });
				assert.deepEqual(
					listed.reactions.map((r: any) => [r.emoji, r.count, [...r.user_ids].sort()]),
					[...["🔥", "🎉", "💯"].map(e => [e, 5, users.map(u => u.id).sort()]), ["👀", 1, [users[1].id]]],
				);
				assert.equal(await store().reactions.count({ message_id: msg.id }), 16);
			});

			it("refuses bad emoji, wrong types, a 21st distinct emoji, deleted and unseen messages; the socket stays connected", async () => {
				const [a, b, c] = [await newUser("va"), await newUser("vb"), await newUser("vc")];
				const [sa, sb, sc] = [await connect(a), await connect(b), await connect(c)];
				const id = await privateChat(sa, sb, b);
				const msg = await send(sa, id, "validate");
				const bad: [unknown, string][] = [
					[`:${"a".repeat(31)}:`, "33 characters"],
					["👍".repeat(33), "33 emoji"],
					["😀".repeat(70), "over the byte cap"],
					[" 👍", "leading space"],
					["👍 👍", "inner space"],
					["👍\t", "tab"],
					["", "empty"],
					["abc", "plain text"],
					[":not valid:", "shortcode with a space"],
					[5, "a number"],
					[null, "null"],
					[["👍"], "an array"],
					[{ e: "👍" }, "an object"],
				];
				for (const [emoji, label] of bad) {
					assertFail(await emitAck(sb, "message:react", { messageId: msg.id, emoji }), "VALIDATION_ERROR", label);
					assertFail(await emitAck(sb, "message:unreact", { messageId: msg.id, emoji }), "VALIDATION_ERROR", `unreact: ${label}`);
				}
				assertFail(await emitAck(sb, "message:react", { messageId: msg.id }), "VALIDATION_ERROR", "no emoji");
				assertFail(await emitAck(sb, "message:react", { messageId: 42, emoji: "👍" }), "VALIDATION_ERROR", "messageId a number");
				assertFail(await emitAck(sb, "message:react", "👍"), "VALIDATION_ERROR", "not an object");
				await stillConnected(sb, id);
				// 32 characters are fine.
				assert.equal((await call(sb, "message:react", { messageId: msg.id, emoji: "👍".repeat(32) })).reactions[0].emoji, "👍".repeat(32));

				// An outsider, an unknown id: the same 404.
				assertFail(await emitAck(sc, "message:react", { messageId: msg.id, emoji: "👍" }), "NOT_FOUND", "outsider");
				assertFail(await emitAck(sc, "message:react", { messageId: "0123456789abcdef01234567", emoji: "👍" }), "NOT_FOUND", "unknown");
				assertFail(await emitAck(sc, "message:unreact", { messageId: msg.id, emoji: "👍" }), "NOT_FOUND", "outsider unreacts");
				await stillConnected(sb, id);

				// 20 distinct emoji, then a 21st is refused; an emoji already there still counts.
				const emoji = Array.from({ length: 20 }, (_, i) => String.fromCodePoint(0x1f600 + i));
				for (const e of emoji.slice(1)) await call(sa, "message:react", { messageId: msg.id, emoji: e });
				const full = await call(sb, "message:list", { conversationId: id, limit: 1 });
				assert.equal(full[0].reactions.length, 20);
				assertFail(await emitAck(sb, "message:react", { messageId: msg.id, emoji: "🦄" }), "VALIDATION_ERROR", "21st emoji");
				assertFail(await emitAck(sa, "message:react", { messageId: msg.id, emoji: ":unicorn:" }), "VALIDATION_ERROR", "21st as shortcode");
				await stillConnected(sb, id);
				const joined = await call(sb, "message:react", { messageId: msg.id, emoji: emoji[5] });
				assert.equal(joined.reactions.length, 20);
				assert.deepEqual(joined.reactions[5], { emoji: emoji[5], count: 2, user_ids: [a.id, b.id], me: true });
				// The refused ones left nothing behind.
				assert.equal(await store().reactions.count({ message_id: msg.id, emoji: "🦄" }), 0);

				// Three new emoji at once for the last place: one gets it.
				const raced = await send(sa, id, "race for the 20th");
				for (const e of emoji.slice(0, 19)) await call(sa, "message:react", { messageId: raced.id, emoji: e });
				const contenders = await Promise.all(["🍎", "🍐", "🍊"].map((e, k) => emitAck([sa, sb, sa][k], "message:react", { messageId: raced.id, emoji: e })));
				assert.equal(contenders.filter(x => x.ok).length, 1, JSON.stringify(contenders.map(x => x.error?.code ?? "ok")));
				for (const x of contenders.filter(y => !y.ok)) assertFail(x, "VALIDATION_ERROR", "past the 20th");
				const [racedNow] = await call(sb, "message:list", { conversationId: id, limit: 1 });
				assert.equal(racedNow.reactions.length, 20);
				assert.equal(await store().reactions.count({ message_id: raced.id }), 20);

				// A deleted message takes no reactions, and its reactions go.
				assert.deepEqual(await emitAck(sa, "message:delete", { messageId: msg.id }), { ok: true });
				assertFail(await emitAck(sb, "message:react", { messageId: msg.id, emoji: "👍" }), "CONFLICT", "deleted");
				assert.equal(await store().reactions.count({ message_id: msg.id }), 0);
				const tomb = (await call(sb, "message:list", { conversationId: id })).find((m: any) => m.id === msg.id);
				assert.equal(tomb.deleted, true);
				assert.deepEqual(tomb.reactions, []);
				await stillConnected(sb, id);
			});

			it("REST twins: POST /messages/:id/reactions (201) and DELETE /messages/:id/reactions/:emoji (200)", async () => {
				const [a, b, c] = [await newUser("wa"), await newUser("wb"), await newUser("wc")];
				const [sa, sb] = [await connect(a), await connect(b)];
				const id = await privateChat(sa, sb, b);
				const msg = await send(sa, id, "rest");
				const added = await http(base, "POST", `/messages/${msg.id}/reactions`, { token: b.accessToken, body: { emoji: "❤️" } });
				assert.equal(added.status, 201, added.text);
				assert.deepEqual(added.body.reactions, [{ emoji: "❤️", count: 1, user_ids: [b.id], me: true }]);
				await waitForEvent(sa, "message:reactions", p => p.messageId === msg.id);
				assert.equal((await http(base, "POST", `/messages/${msg.id}/reactions`, { token: b.accessToken, body: { emoji: "❤️" } })).status, 201, "a repeat");
				assert.equal((await http(base, "POST", `/messages/${msg.id}/reactions`, { token: b.accessToken, body: { emoji: "x".repeat(33) } })).status, 400);
				assert.equal((await http(base, "POST", `/messages/${msg.id}/reactions`, { token: b.accessToken, body: {} })).status, 400);
				assert.equal((await http(base, "POST", `/messages/${msg.id}/reactions`, { token: c.accessToken, body: { emoji: "❤️" } })).status, 404);
				assert.equal((await http(base, "POST", `/messages/${msg.id}/reactions`, { body: { emoji: "❤️" } })).status, 401);
				const removed = await http(base, "DELETE", `/messages/${msg.id}/reactions/${encodeURIComponent("❤️")}`, { token: b.accessToken });
				assert.equal(removed.status, 200, removed.text);
				assert.deepEqual(removed.body.reactions, []);
				assert.equal((await http(base, "DELETE", `/messages/${msg.id}/reactions/${encodeURIComponent("❤️")}`, { token: b.accessToken })).status, 200, "absent");
				assert.equal((await http(base, "DELETE", `/messages/${msg.id}/reactions/abc`, { token: b.accessToken })).status, 400);
				assert.equal((await http(base, "DELETE", `/messages/${msg.id}/reactions/${encodeURIComponent(":wave:")}`, { token: c.accessToken })).status, 404);
			});

			it("no reactions reach a member who blocked the reactor, or whom the reactor blocked", async () => {
				const [a, b, c, d] = [await newUser("ka"), await newUser("kb"), await newUser("kc"), await newUser("kd")];
				const [sa, sb, sc, sd] = [await connect(a), await connect(b), await connect(c), await connect(d)];
				const group = await call(sa, "conversation:create", { type: "group", participants: [b.id, c.id, d.id], name: "blocks" });
				const msg = await send(sa, group.id, "blocked reactions");
				assert.deepEqual(await emitAck(sc, "user:block", { targetUserId: b.id }), { ok: true });
				assert.deepEqual(await emitAck(sb, "user:block", { targetUserId: d.id }), { ok: true });
				await call(sb, "message:react", { messageId: msg.id, emoji: "👋" });
				await waitForEvent(sa, "message:reactions", p => p.messageId === msg.id);
				await sleep(300);
				assert.equal(countEvents(sc, "message:reactions", p => p.messageId === msg.id), 0, "who blocked the reactor");
				assert.equal(countEvents(sd, "message:reactions", p => p.messageId === msg.id), 0, "whom the reactor blocked");

				// In a private chat a block stops reactions and pins both ways (as it stops messages);
				// taking a reaction back still works.
				const id = await privateChat(sa, sb, b);
				const pm = await send(sa, id, "before the block");
				await call(sb, "message:react", { messageId: pm.id, emoji: "👍" });
				assert.deepEqual(await emitAck(sa, "user:block", { targetUserId: b.id }), { ok: true });
				assertFail(await emitAck(sb, "message:react", { messageId: pm.id, emoji: "👎" }), "FORBIDDEN", "blocked reacts");
				assertFail(await emitAck(sa, "message:react", { messageId: pm.id, emoji: "👎" }), "FORBIDDEN", "blocker reacts");
				assertFail(await emitAck(sb, "message:pin", { messageId: pm.id }), "FORBIDDEN", "blocked pins");
				assert.equal((await http(base, "POST", `/messages/${pm.id}/reactions`, { token: b.accessToken, body: { emoji: "👎" } })).status, 403);
				assert.deepEqual((await call(sb, "message:unreact", { messageId: pm.id, emoji: "👍" })).reactions, []);
				await stillConnected(sb, id);
			});
		});

		describe("replies and threads", () => {
			it("a reply quotes its original, the original counts its replies (message:updated), and the thread lists by seq", async () => {
				const [a, b] = [await newUser("pa"), await newUser("pb")];
				const [sa, sb] = [await connect(a), await connect(b)];
				const id = await privateChat(sa, sb, b);
				// 150 characters, emoji among them: the excerpt is the first 100 characters (code points).
				const long = `${"🙂".repeat(50)}${"x".repeat(100)}`;
				const root = await send(sa, id, long);
				await send(sa, id, "in between");
				const r1 = await send(sb, id, "first answer", { replyTo: root.id });
				assert.deepEqual(r1.reply_to, { id: root.id, seq: root.seq, sender_id: a.id, excerpt: `${"🙂".repeat(50)}${"x".repeat(50)}` });
				const upd1 = await waitForEvent(sa, "message:updated", p => p.id === root.id && p.reply_count === 1);
				assert.equal(upd1.content, long);
				await waitForEvent(sb, "message:updated", p => p.id === root.id && p.reply_count === 1);
				// The REST twin takes replyTo too.
				const r2res = await http(base, "POST", `/conversations/${id}/messages`, { token: a.accessToken, body: { content: "second answer", replyTo: root.id } });
				assert.equal(r2res.status, 200, r2res.text);
				const r2 = r2res.body;
				await waitForEvent(sb, "message:updated", p => p.id === root.id && p.reply_count === 2);
				const r3 = await send(sb, id, "third", { replyTo: root.id });
				await send(sb, id, "not in the thread");

				const seqs = (list: any[]) => list.map(m => m.seq);
				const thread = await call(sb, "message:list", { conversationId: id, replyTo: root.id });
				assert.deepEqual(seqs(thread), [r1.seq, r2.seq, r3.seq]);
				assert.deepEqual(seqs(await call(sb, "message:list", { conversationId: id, replyTo: root.id, limit: 2 })), [r1.seq, r2.seq]);
				assert.deepEqual(seqs(await call(sb, "message:list", { conversationId: id, replyTo: root.id, after: r1.seq })), [r2.seq, r3.seq]);
				assert.deepEqual(seqs(await call(sb, "message:list", { conversationId: id, replyTo: root.id, before: r3.seq, limit: 1 })), [r2.seq]);
				const rest = await http(base, "GET", `/conversations/${id}/messages?replyTo=${root.id}&limit=10`, { token: a.accessToken });
				assert.equal(rest.status, 200);
				assert.deepEqual(seqs(rest.body), [r1.seq, r2.seq, r3.seq]);
				const [listedRoot] = (await call(sa, "message:list", { conversationId: id, before: root.seq + 1, limit: 1 })) as any[];
				assert.equal(listedRoot.reply_count, 3);
				// A replyTo of nothing here: an empty thread.
				assert.deepEqual(await call(sa, "message:list", { conversationId: id, replyTo: "0123456789abcdef01234567" }), []);

				// An edit of the original: the replies quote the new text.
				await call(sa, "message:edit", { messageId: root.id, content: "edited original" });
				const afterEdit = await call(sb, "message:list", { conversationId: id, replyTo: root.id });
				assert.deepEqual(afterEdit.map((m: any) => m.reply_to.excerpt), ["edited original", "edited original", "edited original"]);

				// A reply deleted: one fewer, told through message:updated.
				assert.deepEqual(await emitAck(sb, "message:delete", { messageId: r3.id }), { ok: true });
				await waitForEvent(sa, "message:updated", p => p.id === root.id && p.reply_count === 2);
				// The original deleted: the replies keep reply_to, without an excerpt.
				assert.deepEqual(await emitAck(sa, "message:delete", { messageId: root.id }), { ok: true });
				// (The deleted reply stays in the thread as a tombstone, as in the conversation.)
				const orphaned = await call(sb, "message:list", { conversationId: id, replyTo: root.id });
				assert.deepEqual(orphaned.map((m: any) => [m.id, m.deleted]), [[r1.id, false], [r2.id, false], [r3.id, true]]);
				for (const m of orphaned) assert.deepEqual(m.reply_to, { id: root.id, seq: root.seq, sender_id: a.id, excerpt: null });
				const stored = (await store().messages.findById(r1.id)) as MessageDoc;
				assert.equal(stored.reply_to?.excerpt, null);
				// Replying to a deleted message is refused.
				assertFail(await emitAck(sb, "message:send", { conversationId: id, content: "late", replyTo: root.id }), "VALIDATION_ERROR", "reply to deleted");
				await stillConnected(sb, id);
			});

			it("refuses a reply to a message of another conversation, of cleared history, or unknown, the same way; wrong types too", async () => {
				const [a, b, c] = [await newUser("xa"), await newUser("xb"), await newUser("xc")];
				const [sa, sb, sc] = [await connect(a), await connect(b), await connect(c)];
				const id = await privateChat(sa, sb, b);
				const other = await privateChat(sa, sc, c);
				const elsewhere = await send(sa, other, "in the other chat");
				const refused = await emitAck(sa, "message:send", { conversationId: id, content: "across", replyTo: elsewhere.id });
				assertFail(refused, "VALIDATION_ERROR", "across conversations");
				assert.equal((refused.error?.details as any[])[0].field, "replyTo");
				// b never saw that message: the same answer as for one that does not exist.
				const unknown = await emitAck(sb, "message:send", { conversationId: id, content: "x", replyTo: "0123456789abcdef01234567" });
				assertFail(unknown, "VALIDATION_ERROR", "unknown id");
				const across = await emitAck(sb, "message:send", { conversationId: id, content: "x", replyTo: elsewhere.id });
				assert.deepEqual(across.error?.message, unknown.error?.message);
				assertFail(await emitAck(sb, "message:send", { conversationId: id, content: "x", replyTo: 12 }), "VALIDATION_ERROR", "a number");
				assertFail(await emitAck(sb, "message:send", { conversationId: id, content: "x", replyTo: "not an id!" }), "VALIDATION_ERROR", "malformed");
				assertFail(await emitAck(sb, "message:send", { conversationId: id, content: "x", replyTo: "" }), "VALIDATION_ERROR", "empty");
				const rest = await http(base, "POST", `/conversations/${id}/messages`, { token: a.accessToken, body: { content: "x", replyTo: elsewhere.id } });
				assert.equal(rest.status, 400);
				await stillConnected(sb, id);
				// History b cleared is not there to answer.
				const old = await send(sa, id, "before the clear");
				assert.equal((await http(base, "DELETE", `/conversations/${id}/messages`, { token: b.accessToken })).status, 204);
				assertFail(await emitAck(sb, "message:send", { conversationId: id, content: "x", replyTo: old.id }), "VALIDATION_ERROR", "cleared");
				// a did not clear it: a may.
				assert.equal((await send(sa, id, "still here", { replyTo: old.id })).reply_to.id, old.id);
				// Nothing refused was stored.
				assert.equal(await store().messages.count({ conversation_id: id }), 2);
			});
		});

		describe("pins", () => {
			it("in a private chat either party pins: message:pinned, a system message, the pins newest first, unpin; REST twins", async () => {
				const [a, b, c] = [await newUser("na"), await newUser("nb"), await newUser("nc")];
				const [sa, sb] = [await connect(a), await connect(b)];
				const id = await privateChat(sa, sb, b);
				const m1 = await send(sa, id, "pin me");
				const m2 = await send(sb, id, "and me");
				const pinned = await call(sb, "message:pin", { messageId: m1.id });
				assert.equal(pinned.pinned_by, b.id);
				assert.ok(pinned.pinned_at);
				assert.deepEqual(await waitForEvent(sa, "message:pinned", p => p.messageId === m1.id), { conversationId: id, messageId: m1.id, userId: b.id });
				const sys1 = await waitForEvent(sa, "message:created", p => p.type === "system" && p.system_data?.event === "message_pinned");
				assert.deepEqual(sys1.system_data, { event: "message_pinned", userId: a.id, actorId: b.id, messageId: m1.id });
				// Twice: nothing new.
				assert.equal((await call(sa, "message:pin", { messageId: m1.id })).pinned_by, b.id);
				await sleep(50);
				const pin2 = await http(base, "POST", `/messages/${m2.id}/pin`, { token: a.accessToken });
				assert.equal(pin2.status, 200, pin2.text);
				assert.equal(pin2.body.pinned_by, a.id);
				await waitForEvent(sb, "message:pinned", p => p.messageId === m2.id);
				const pins = await call(sa, "conversation:pins", { conversationId: id });
				assert.deepEqual(pins.map((m: any) => m.id), [m2.id, m1.id]);
				const restPins = await http(base, "GET", `/conversations/${id}/pins`, { token: b.accessToken });
				assert.equal(restPins.status, 200);
				assert.deepEqual(restPins.body.map((m: any) => m.id), [m2.id, m1.id]);
				assert.equal((await http(base, "GET", `/conversations/${id}/pins`, { token: c.accessToken })).status, 404);
				assert.equal((await http(base, "POST", `/messages/${m1.id}/pin`, { token: c.accessToken })).status, 404);
				await sleep(200);
				assert.equal(countEvents(sb, "message:pinned", p => p.messageId === m1.id), 1);
				assert.equal(countEvents(sb, "message:created", p => p.system_data?.event === "message_pinned"), 2);

				const unpinned = await call(sa, "message:unpin", { messageId: m1.id });
				assert.equal(unpinned.pinned_at, null);
				assert.equal(unpinned.pinned_by, null);
				assert.deepEqual(await waitForEvent(sb, "message:unpinned", p => p.messageId === m1.id), { conversationId: id, messageId: m1.id, userId: a.id });
				assert.equal((await call(sa, "message:unpin", { messageId: m1.id })).pinned_at, null, "again: nothing");
				const restUnpin = await http(base, "DELETE", `/messages/${m2.id}/pin`, { token: b.accessToken });
				assert.equal(restUnpin.status, 200);
				assert.equal(restUnpin.body.pinned_at, null);
				assert.deepEqual(await call(sb, "conversation:pins", { conversationId: id }), []);
				await sleep(200);
				assert.equal(countEvents(sb, "message:unpinned", p => p.messageId === m1.id), 1);
			});

			it("in a group only the admin and moderators pin; system and deleted messages are refused; deleting a pinned message unpins it", async () => {
				const [a, b, c] = [await newUser("ga"), await newUser("gb"), await newUser("gc")];
				const [sa, sb, sc] = [await connect(a), await connect(b), await connect(c)];
				const group = await call(sa, "conversation:create", { type: "group", participants: [b.id, c.id], name: "pins" });
				const msg = await send(sc, group.id, "worth pinning");
				assertFail(await emitAck(sc, "message:pin", { messageId: msg.id }), "FORBIDDEN", "plain member pins");
				assertFail(await emitAck(sb, "message:pin", { messageId: msg.id }), "FORBIDDEN", "plain member b pins");
				assert.equal((await http(base, "POST", `/messages/${msg.id}/pin`, { token: c.accessToken })).status, 403);
				await stillConnected(sc, group.id);
				await call(sa, "conversation:promote-moderator", { conversationId: group.id, userId: b.id });
				assert.equal((await call(sb, "message:pin", { messageId: msg.id })).pinned_by, b.id);
				assertFail(await emitAck(sc, "message:unpin", { messageId: msg.id }), "FORBIDDEN", "plain member unpins");
				const [systemMsg] = (await call(sa, "message:list", { conversationId: group.id, limit: 1 })) as any[];
				assert.equal(systemMsg.type, "system");
				assertFail(await emitAck(sa, "message:pin", { messageId: systemMsg.id }), "CONFLICT", "system message");
				assertFail(await emitAck(sa, "message:pin", { messageId: 7 }), "VALIDATION_ERROR", "wrong type");
				await stillConnected(sa, group.id);

				// Deleting it unpins it (and everyone is told).
				assert.deepEqual(await emitAck(sa, "message:delete", { messageId: msg.id }), { ok: true });
				await waitForEvent(sc, "message:unpinned", p => p.messageId === msg.id);
				assert.deepEqual(await call(sc, "conversation:pins", { conversationId: group.id }), []);
				assertFail(await emitAck(sa, "message:pin", { messageId: msg.id }), "CONFLICT", "deleted message");
				await stillConnected(sa, group.id);
			});

			it("holds at most 50 pins per conversation: the 51st is a CONFLICT, also when pins race", async () => {
				const [a, b] = [await newUser("fa"), await newUser("fb")];
				const [sa, sb] = [await connect(a), await connect(b)];
				const id = await privateChat(sa, sb, b);
				const msgs: { id: string }[] = [];
				for (let i = 0; i < 52; i++) msgs.push(await send(i % 2 === 0 ? sa : sb, id, `pin ${i}`));
				// 47 pinned as the store keeps them (the API's pins are tested above), a minute ago.
				const earlier = new Date(Date.now() - 60_000);
				// Under the service's per-message locks, as its own writes are: FerretDB rewrites whole
				// documents, so a write beside the batched outbox flags could lose these pins.
				const ids = msgs.slice(0, 47).map(m => m.id);
				const svc = sys.broker.getLocalService("messages") as unknown as { withLocks<T>(keys: string[], fn: () => Promise<T>): Promise<T> };
				await svc.withLocks(ids.map(m => `m:${m}`), () => store().messages.updateMany({ _id: { $in: ids } }, { $set: { pinned_in: id, pinned_at: earlier, pinned_by: a.id } }));
				assert.equal(await store().messages.count({ pinned_in: id }), 47);
				await call(sa, "message:pin", { messageId: msgs[47].id });
				// Three at once for the last two places: two are pinned, one is refused.
				const racing = await Promise.all([48, 49, 50].map((i, k) => emitAck(k % 2 === 0 ? sa : sb, "message:pin", { messageId: msgs[i].id })));
				assert.equal(racing.filter(x => x.ok).length, 2, JSON.stringify(racing.map(x => x.error?.code ?? "ok")));
				assertFail(racing.find(x => !x.ok)!, "CONFLICT", "the one too many");
				assertFail(await emitAck(sb, "message:pin", { messageId: msgs[51].id }), "CONFLICT", "51st pin");
				assert.equal((await http(base, "POST", `/messages/${msgs[51].id}/pin`, { token: a.accessToken })).status, 409);
				await stillConnected(sb, id);
				const pins = await call(sa, "conversation:pins", { conversationId: id });
				assert.equal(pins.length, 50);
				assert.equal(await store().messages.count({ pinned_in: id }), 50);
				// One unpinned, and there is room again.
				await call(sa, "message:unpin", { messageId: msgs[0].id });
				const last = await call(sb, "message:pin", { messageId: msgs[51].id });
				assert.ok(last.pinned_at);
				assert.equal((await call(sa, "conversation:pins", { conversationId: id }))[0].id, msgs[51].id, "most recently pinned first");
			});
		});

		describe("mentions", () => {
			it("@username of members (any case), @all by the admin or a moderator only; stored, pushed and parsed again on edit", async () => {
				const [a, b, c, d, e] = [await newUser("ma"), await newUser("mb"), await newUser("mc"), await newUser("md"), await newUser("me")];
				const [sa, sb, sc] = [await connect(a), await connect(b), await connect(c)];
				const group = await call(sa, "conversation:create", { type: "group", participants: [b.id, c.id, d.id], name: "mentions" });
				const gid = group.id as string;
				const m1 = await send(sb, gid, `hi @${a.username.toUpperCase()}, @${c.username}! and @${e.username} and @${b.username} and mail ${d.username}@example.com`);
				assert.deepEqual(m1.mentions, [a.id, c.id], "members only, not the sender, not an address");
				assert.deepEqual((await waitForEvent(sc, "message:created", p => p.id === m1.id)).mentions, [a.id, c.id]);
				const sortIds = (ids: number[]) => [...ids].sort((x, y) => x - y);
				// @all: the admin, everyone else; a plain member, nobody (and no error).
				assert.deepEqual(sortIds((await send(sa, gid, "@all meeting")).mentions), sortIds([b.id, c.id, d.id]));
				assert.deepEqual((await send(sb, gid, "@all meeting?")).mentions, []);
				await call(sa, "conversation:promote-moderator", { conversationId: gid, userId: c.id });
				assert.deepEqual(sortIds((await send(sc, gid, "hey @all")).mentions), sortIds([a.id, b.id, d.id]));
				// Not a member any more: not mentioned.
				await call(sa, "conversation:remove-member", { conversationId: gid, userId: d.id });
				assert.deepEqual((await send(sa, gid, `@${d.username} are you there`)).mentions, []);
				// An edit parses again.
				const edited = await call(sb, "message:edit", { messageId: m1.id, content: `only @${c.username} now` });
				assert.deepEqual(edited.mentions, [c.id]);
				assert.deepEqual((await call(sb, "message:edit", { messageId: m1.id, content: "nobody" })).mentions, []);
				// In a private chat @all is no one.
				const id = await privateChat(sa, sb, b);
				assert.deepEqual((await send(sa, id, "@all")).mentions, []);
				assert.deepEqual((await send(sa, id, `@${b.username}`)).mentions, [b.id]);
			});
		});

		describe("store round trips", () => {
			it("a plain message:send costs nothing more; each new operation costs what it says", async () => {
				const [a, b] = [await newUser("oa"), await newUser("ob")];
				const [sa, sb] = [await connect(a), await connect(b)];
				const id = await privateChat(sa, sb, b);
				const root = await send(sa, id, "warm the caches");
				await sleep(500);
				const measure = async (fn: () => Promise<unknown>) => {
					// The outbox flags of the messages before are written 250 ms after them.
					await sleep(400);
					resetStoreOps();
					await fn();
					const ops = storeOps();
					return Object.fromEntries(Object.entries(ops).filter(([k]) => k.startsWith("messages.") || k.startsWith("reactions.")));
				};
				const plain = await measure(() => send(sa, id, "plain, no at sign"));
				assert.deepEqual(plain, { "messages.insert": 1 }, JSON.stringify(plain));
				const mention = await measure(() => send(sa, id, `@${b.username}`));
				assert.deepEqual(mention, { "messages.insert": 1 }, "names come from the profile cache");
				const reply = await measure(() => send(sb, id, "a reply", { replyTo: root.id }));
				const react = await measure(() => call(sb, "message:react", { messageId: root.id, emoji: "👍" }));
				const list = await measure(() => call(sb, "message:list", { conversationId: id, limit: 50 }));
				assert.deepEqual(list, { "messages.find": 1, "reactions.find": 1 }, "one query for a page's reactions");
				const pin = await measure(() => call(sb, "message:pin", { messageId: root.id }));
				console.log(`${mode} store operations: plain send ${JSON.stringify(plain)}; reply ${JSON.stringify(reply)}; react ${JSON.stringify(react)}; list ${JSON.stringify(list)}; pin ${JSON.stringify(pin)}`);
			});
		});
	});
}
