/**
 * The conversations and notifications side of mentions (`mention_seqs` on a membership,
 * `unread_mentions`, `mention` notifications), and conversations.privatePartners, against the real
 * services, gateway and sockets, on the embedded document store and on MongoDB (FerretDB in CI).
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { MembershipDoc } from "../../lib/chat";
import type { DocsMixinThis } from "../../mixins/docs.mixin";
import { call, connectSocket, countEvents, emitAck, sleep, type TestSocket, waitForEvent } from "../helpers/sockets";
import { http, registerUser, startBroker, type RunningSystem, waitFor, storeTestEnv } from "../helpers/system";

type User = Awaited<ReturnType<typeof registerUser>>;

export function runMentionsSuite(mode: "embedded" | "mongo", mongoUrl: string | null, skip: string | false = false) {
	describe(`mentions and private partners (${mode})`, { skip }, () => {
		let sys: RunningSystem;
		let base: string;
		const sockets: TestSocket[] = [];

		const newUser = (p: string) => registerUser(base, p);
		const connect = async (u: User, nsp = "/chat") => {
			const s = await connectSocket(base, u.accessToken, nsp);
			sockets.push(s);
			return s;
		};
		const partnersOf = (u: User) => sys.broker.call<number[], { userId: number }>("conversations.privatePartners", { userId: u.id });
		/** An accepted private chat between a and b (a asks, b accepts); its id. */
		const privateChat = async (a: User, b: User) => {
			const conv = await http(base, "POST", "/conversations", { token: a.accessToken, body: { participantIds: [b.id], isGroup: false } });
			assert.equal(conv.status, 201, conv.text);
			const accepted = await http(base, "POST", `/conversations/${conv.body.id}/accept`, { token: b.accessToken });
			assert.equal(accepted.body.status, "accepted");
			return conv.body.id as string;
		};
		/** The membership as stored (the conversations service's own store): what the API never shows. */
		const membership = async (conversationId: string, u: User) => {
			const svc = sys.broker.getLocalService("conversations") as unknown as DocsMixinThis<"memberships">;
			return (await svc.stores.memberships.findOne({ key: `${conversationId}:${u.id}` })) as MembershipDoc | null;
		};

		before(async () => {
			storeTestEnv("mentions-suite-secret-0123456789", mongoUrl);
			delete process.env.TRANSPORTER;
			sys = await startBroker(["api", "users", "conversations", "messages", "notifications"]);
			base = sys.baseUrl;
		});

		after(async () => {
			for (const s of sockets) s.close();
			await sys?.stop();
		});

		/** A group of `admin` with `members`, made over REST; its id. */
		const groupOf = async (admin: User, members: User[], name = "team") => {
			const res = await http(base, "POST", "/conversations", { token: admin.accessToken, body: { participantIds: members.map(m => m.id), isGroup: true, name } });
			assert.equal(res.status, 201, res.text);
			return res.body.id as string;
		};
		const conversationOf = async (u: User, id: string) => {
			const res = await http(base, "GET", `/conversations/${id}`, { token: u.accessToken });
			assert.equal(res.status, 200, res.text);
			return res.body as { unread_count: number; unread_mentions: number };
		};
		/** A user's notifications of the messages of a conversation (not the group invite). */
		const notificationsOf = async (u: User, conversationId: string) =>
			((await http(base, "GET", "/notifications?limit=100", { token: u.accessToken })).body as any[]).filter(n => n.related_id === conversationId && n.type !== "group_invite");
		const unreadNotifications = async (u: User) => (await http(base, "GET", "/notifications/unread/count", { token: u.accessToken })).body.count as number;
		/** Notifications of messages: a group's invite may come in before or after a socket connects. */
		const ofMessages = (p: { type: string }) => p.type !== "group_invite";
		/** Waits for this message's notification on a /notifications socket of its user. */
		const notified = (s: TestSocket, messageContent: string) => waitForEvent(s, "notification:created", p => p.content === messageContent);
		/** Something sent after `content` has been delivered everywhere: notifications are consumed in order per batch, so later checks see it. */
		const settle = () => sleep(400);
		/** On the embedded store, reading trims the list to unread seqs; FerretDB 1.x ignores a $pull with a condition (the counts hold all the same). */
		const assertTrimmed = async (conversationId: string, u: User) => {
			const m = await membership(conversationId, u);
			assert.ok(m, "membership");
			if (mode === "embedded") assert.deepEqual(m.mention_seqs, [], "read mentions leave mention_seqs");
		};

		describe("mentions", () => {
			it("@username: one `mention` notification for the member named (not also `message`), `message` for the rest, unread_mentions", async () => {
				const [a, b, c] = [await newUser("mua"), await newUser("mub"), await newUser("muc")];
				const id = await groupOf(a, [b, c], "crew");
				const sa = await connect(a);
				const [nb, nc] = [await connect(b, "/notifications"), await connect(c, "/notifications")];
				const text = `hey @${b.username}, look`;
				const sent = await call(sa, "message:send", { conversationId: id, content: text });
				assert.deepEqual(sent.mentions, [b.id]);
				const forB = await notified(nb, text);
				assert.equal(forB.type, "mention");
				assert.equal(forB.title, `${a.username} mentioned you in crew`);
				assert.equal(forB.sender_id, a.id);
				assert.equal(forB.related_id, id);
				assert.equal((await notified(nc, text)).type, "message");
				await settle();
				assert.equal(countEvents(nb, "notification:created", p => p.content === text), 1, "b: one notification for the message");
				assert.deepEqual((await notificationsOf(b, id)).map(n => n.type), ["mention"]);
				assert.deepEqual((await notificationsOf(c, id)).map(n => n.type), ["message"]);
				assert.equal(await unreadNotifications(b), 2, "the group invite and the mention");
				await waitForEvent(nb, "notification:count", p => p.count === 2);
				// The conversation as each sees it: in GET, and in the list.
				// Unread: the group_created system message and this one.
				assert.deepEqual(await conversationOf(b, id).then(x => [x.unread_count, x.unread_mentions]), [2, 1]);
				assert.deepEqual(await conversationOf(c, id).then(x => [x.unread_count, x.unread_mentions]), [2, 0]);
				assert.equal(await conversationOf(a, id).then(x => x.unread_mentions), 0);
				const listed = (await http(base, "GET", "/conversations", { token: b.accessToken })).body.find((x: any) => x.id === id);
				assert.equal(listed.unread_mentions, 1);
			});

			it("reaches a member who muted the conversation when it names it, and nobody else who muted it", async () => {
				const [a, b, c] = [await newUser("mma"), await newUser("mmb"), await newUser("mmc")];
				const id = await groupOf(a, [b, c]);
				for (const u of [b, c]) assert.equal((await http(base, "POST", `/conversations/${id}/mute`, { token: u.accessToken, body: { muted: true } })).status, 204);
				const sa = await connect(a);
				const [nb, nc] = [await connect(b, "/notifications"), await connect(c, "/notifications")];
				const text = `@${b.username} wake up`;
				await call(sa, "message:send", { conversationId: id, content: text });
				assert.equal((await notified(nb, text)).type, "mention");
				await settle();
				assert.equal(countEvents(nc, "notification:created", ofMessages), 0, "muted and not named: nothing");
				assert.equal(await conversationOf(b, id).then(x => x.unread_mentions), 1);
				assert.equal(await conversationOf(c, id).then(x => x.unread_mentions), 0);
			});

			it("@all from the admin or a moderator names every member; from a plain member, nobody", async () => {
				const [a, b, c, d] = [await newUser("maa"), await newUser("mab"), await newUser("mac"), await newUser("mad")];
				const id = await groupOf(a, [b, c, d]);
				const [sa, sb, sc] = [await connect(a), await connect(b), await connect(c)];
				await call(sa, "conversation:promote-moderator", { conversationId: id, userId: b.id });
				const [na, nb, nc, nd] = [await connect(a, "/notifications"), await connect(b, "/notifications"), await connect(c, "/notifications"), await connect(d, "/notifications")];
				const fromAdmin = "@all meeting at noon";
				const m1 = await call(sa, "message:send", { conversationId: id, content: fromAdmin });
				assert.deepEqual([...m1.mentions].sort(), [b.id, c.id, d.id].sort());
				for (const s of [nb, nc, nd]) assert.equal((await notified(s, fromAdmin)).type, "mention");
				const fromModerator = "@all moved to one";
				await call(sb, "message:send", { conversationId: id, content: fromModerator });
				for (const s of [na, nc, nd]) assert.equal((await notified(s, fromModerator)).type, "mention");
				const fromPlain = "@all free pizza";
				const m3 = await call(sc, "message:send", { conversationId: id, content: fromPlain });
				assert.deepEqual(m3.mentions, []);
				for (const s of [na, nb, nd]) assert.equal((await notified(s, fromPlain)).type, "message");
				await settle();
				assert.equal(countEvents(nc, "notification:created", ofMessages), 2, "c: the admin's and the moderator's, never its own");
				// d read nothing: mentioned twice, three unread messages (after its own join).
				const dView = await conversationOf(d, id);
				assert.equal(dView.unread_mentions, 2);
				// A muted member is reached by @all too.
				assert.equal((await http(base, "POST", `/conversations/${id}/mute`, { token: d.accessToken, body: { muted: true } })).status, 204);
				const again = "@all last call";
				await call(sa, "message:send", { conversationId: id, content: again });
				assert.equal((await notified(nd, again)).type, "mention");
			});

			it("never past a block: who blocked the sender gets no notification and no unread mention", async () => {
				const [a, b, c] = [await newUser("mba"), await newUser("mbb"), await newUser("mbc")];
				const id = await groupOf(a, [b, c]);
				const [sa, sc] = [await connect(a), await connect(c)];
				const [nb, nc] = [await connect(b, "/notifications"), await connect(c, "/notifications")];
				assert.deepEqual(await emitAck(sc, "user:block", { targetUserId: a.id }), { ok: true });
				await waitForEvent(sc, "user:blocked");
				const text = `@${c.username} @${b.username} hello`;
				await call(sa, "message:send", { conversationId: id, content: text });
				assert.equal((await notified(nb, text)).type, "mention");
				const all = "@all are you there";
				await call(sa, "message:send", { conversationId: id, content: all });
				assert.equal((await notified(nb, all)).type, "mention");
				await settle();
				assert.equal(countEvents(nc, "notification:created", ofMessages), 0, "the blocker hears nothing of the blocked sender");
				assert.equal(await conversationOf(c, id).then(x => x.unread_mentions), 0);
				assert.equal(await conversationOf(b, id).then(x => x.unread_mentions), 2);
			});

			it("unread_mentions resets with the unread count: mark-read (socket and REST), message:read, clearing the history", async () => {
				const [a, b] = [await newUser("mra"), await newUser("mrb")];
				const id = await groupOf(a, [b]);
				const [sa, sb] = [await connect(a), await connect(b)];
				const name = `@${b.username}`;
				await call(sa, "message:send", { conversationId: id, content: `${name} one` });
				await call(sa, "message:send", { conversationId: id, content: "plain" });
				const last = await call(sa, "message:send", { conversationId: id, content: `two ${name}` });
				// Unread: the group_created system message and these three.
				assert.deepEqual(await conversationOf(b, id).then(x => [x.unread_count, x.unread_mentions]), [4, 2]);
				// Pushed conversations carry it too (each member its own).
				await call(sa, "conversation:update", { conversationId: id, name: "renamed" });
				const pushed = await waitForEvent(sb, "conversation:updated", p => p.conversationId === id && p.conversation.name === "renamed");
				assert.equal(pushed.conversation.unread_mentions, 2);
				assert.deepEqual(await call(sb, "conversation:mark-read", { conversationId: id }), { unread_count: 0 });
				assert.deepEqual(await conversationOf(b, id).then(x => [x.unread_count, x.unread_mentions]), [0, 0]);
				await assertTrimmed(id, b);

				// message:read of the newest message (advanceRead).
				const m4 = await call(sa, "message:send", { conversationId: id, content: `${name} three` });
				assert.equal(await conversationOf(b, id).then(x => x.unread_mentions), 1);
				assert.deepEqual(await emitAck(sb, "message:read", { messageId: m4.id }), { ok: true });
				await waitFor(async () => (await conversationOf(b, id)).unread_mentions === 0, 5000);
				await assertTrimmed(id, b);

				// Reading an older message leaves the newer mention unread.
				const m5 = await call(sa, "message:send", { conversationId: id, content: "plain again" });
				await call(sa, "message:send", { conversationId: id, content: `${name} four` });
				assert.deepEqual(await emitAck(sb, "message:read", { messageId: m5.id }), { ok: true });
				await waitFor(async () => (await conversationOf(b, id)).unread_count === 1, 5000);
				assert.equal(await conversationOf(b, id).then(x => x.unread_mentions), 1);

				// REST mark-read, then clearing the history.
				assert.equal((await http(base, "POST", `/conversations/${id}/read`, { token: b.accessToken })).status, 200);
				assert.equal(await conversationOf(b, id).then(x => x.unread_mentions), 0);
				await call(sa, "message:send", { conversationId: id, content: `${name} five` });
				assert.equal(await conversationOf(b, id).then(x => x.unread_mentions), 1);
				assert.equal((await http(base, "DELETE", `/conversations/${id}/messages`, { token: b.accessToken })).status, 204);
				assert.deepEqual(await conversationOf(b, id).then(x => [x.unread_count, x.unread_mentions]), [0, 0]);
				await assertTrimmed(id, b);
				// The member's own message reads what came before it.
				await call(sa, "message:send", { conversationId: id, content: `${name} six` });
				await call(sb, "message:send", { conversationId: id, content: "on it" });
				assert.deepEqual(await conversationOf(b, id).then(x => [x.unread_count, x.unread_mentions]), [0, 0]);
				assert.ok(last.id);
			});

			it("names only members: a stranger, a former member and a made-up name are nobody", async () => {
				const [a, b, out] = [await newUser("mna"), await newUser("mnb"), await newUser("mno")];
				const id = await groupOf(a, [b]);
				const sa = await connect(a);
				const nOut = await connect(out, "/notifications");
				const nb = await connect(b, "/notifications");
				const text = `@${out.username} @nosuchuser_zz hi`;
				const sent = await call(sa, "message:send", { conversationId: id, content: text });
				assert.deepEqual(sent.mentions, []);
				assert.equal((await notified(nb, text)).type, "message");
				// b leaves; a mention of b is then nobody's either.
				await call(sa, "conversation:remove-member", { conversationId: id, userId: b.id });
				const after = `@${b.username} come back`;
				assert.deepEqual((await call(sa, "message:send", { conversationId: id, content: after })).mentions, []);
				await settle();
				assert.equal(countEvents(nOut, "notification:created"), 0);
				assert.equal(countEvents(nb, "notification:created", p => p.content === after), 0);
			});

			it("in a message request the addressee gets the request, not a mention", async () => {
				const [a, b] = [await newUser("mqa"), await newUser("mqb")];
				const sa = await connect(a);
				const nb = await connect(b, "/notifications");
				const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
				const text = `@${b.username} hello there`;
				await call(sa, "message:send", { conversationId: conv.id, content: text });
				assert.equal((await notified(nb, text)).type, "message_request");
				await settle();
				assert.equal(countEvents(nb, "notification:created"), 1);
			});

			it("a deleted message takes its mention notifications with it", async () => {
				const [a, b] = [await newUser("mda"), await newUser("mdb")];
				const id = await groupOf(a, [b]);
				const sa = await connect(a);
				const nb = await connect(b, "/notifications");
				const text = `@${b.username} secret`;
				const sent = await call(sa, "message:send", { conversationId: id, content: text });
				const n = await notified(nb, text);
				assert.equal(n.type, "mention");
				await waitFor(async () => (await unreadNotifications(b)) === 2, 5000); // the invite and the mention
				assert.deepEqual(await emitAck(sa, "message:delete", { messageId: sent.id }), { ok: true });
				await waitForEvent(nb, "notification:deleted", p => p.notificationId === n.id);
				await waitForEvent(nb, "notification:count", p => p.count === 1);
				assert.deepEqual(await notificationsOf(b, id), []);
			});

			it("an edit that names someone else moves the unread mention; a deletion takes it away", async () => {
				const [a, b, c] = [await newUser("mea"), await newUser("meb"), await newUser("mec")];
				const id = await groupOf(a, [b, c]);
				const sa = await connect(a);
				const mentionsOf = () => Promise.all([b, c].map(u => conversationOf(u, id).then(x => x.unread_mentions)));
				const sent = await call(sa, "message:send", { conversationId: id, content: `@${b.username} look` });
				assert.deepEqual(sent.mentions, [b.id]);
				await waitFor(async () => (await mentionsOf()).join() === "1,0", 5000);
				const edited = await call(sa, "message:edit", { messageId: sent.id, content: `@${c.username} look` });
				assert.deepEqual(edited.mentions, [c.id]);
				assert.deepEqual(await mentionsOf(), [0, 1]);
				// An edit that keeps who it names writes nothing new.
				await call(sa, "message:edit", { messageId: sent.id, content: `@${c.username} look again` });
				assert.deepEqual(await mentionsOf(), [0, 1]);
				assert.deepEqual(await emitAck(sa, "message:delete", { messageId: sent.id }), { ok: true });
				assert.deepEqual(await mentionsOf(), [0, 0]);
			});
		});

		describe("the internal actions, called as the messages service calls them", () => {
			const record = (conversationId: string, seq: number, senderId: number, mentions?: unknown) =>
				sys.broker.call("conversations.recordMessage", {
					conversationId,
					seq,
					senderId,
					lastMessage: { id: `m${seq}`, content: "x", sender_id: senderId, type: "text", deleted: false, created_at: new Date().toISOString(), createdAt: new Date().toISOString() },
					...(mentions === undefined ? {} : { mentions }),
				});

			it("recordMessage notes a mention only on members' memberships: not the sender, strangers, or who blocked the sender", async () => {
				const [a, b, c, out] = [await newUser("ira"), await newUser("irb"), await newUser("irc"), await newUser("iro")];
				const id = await groupOf(a, [b, c]);
				const sc = await connect(c);
				assert.deepEqual(await emitAck(sc, "user:block", { targetUserId: a.id }), { ok: true });
				await waitForEvent(sc, "user:blocked");
				// The group_created system message is seq 1.
				await record(id, 2, a.id, [a.id, b.id, b.id, c.id, out.id, 987654321]);
				assert.deepEqual((await membership(id, b))?.mention_seqs, [2]);
				assert.deepEqual((await membership(id, a))?.mention_seqs, [], "not the sender");
				assert.deepEqual((await membership(id, c))?.mention_seqs, [], "not who blocked the sender");
				assert.equal(await membership(id, out), null, "a stranger gets no membership");
				// Recorded twice (a retry): counted once.
				await record(id, 2, a.id, [b.id]);
				assert.deepEqual((await membership(id, b))?.mention_seqs, [2]);
				assert.equal(await conversationOf(b, id).then(x => x.unread_mentions), 1);
				// No mentions: nothing written to the memberships.
				await record(id, 3, a.id);
				await record(id, 4, a.id, []);
				assert.deepEqual((await membership(id, b))?.mention_seqs, [2]);
				// A mention in a conversation one is not in reaches nothing.
				const other = await groupOf(out, [c]);
				await record(other, 2, out.id, [b.id]);
				assert.equal(await membership(other, b), null);
				assert.equal(await conversationOf(b, id).then(x => x.unread_mentions), 1);
			});

			it("setMentions (an edit, a deletion): who is no longer named loses the unread mention, who is named now gains it while unread", async () => {
				const [a, b, c, d] = [await newUser("isa"), await newUser("isb"), await newUser("isc"), await newUser("isd")];
				const id = await groupOf(a, [b, c, d]);
				const set = (seq: number, mentions: unknown) => sys.broker.call("conversations.setMentions", { conversationId: id, seq, senderId: a.id, mentions });
				await record(id, 2, a.id, [b.id]);
				await record(id, 3, a.id, [b.id, c.id]);
				assert.deepEqual(await Promise.all([b, c, d].map(u => conversationOf(u, id).then(x => x.unread_mentions))), [2, 1, 0]);
				// d read up to 3: naming it in 2 now adds nothing for it.
				assert.equal((await http(base, "POST", `/conversations/${id}/read`, { token: d.accessToken })).status, 200);
				// Message 2 edited to name c (and a stranger, and the sender) instead of b; message 3 deleted.
				await set(2, [c.id, d.id, a.id, 987654321]);
				await set(3, []);
				assert.deepEqual(await Promise.all([b, c, d].map(u => conversationOf(u, id).then(x => x.unread_mentions))), [0, 1, 0]);
				assert.deepEqual((await membership(id, b))?.mention_seqs, []);
				assert.deepEqual((await membership(id, c))?.mention_seqs, [2]);
				assert.deepEqual((await membership(id, d))?.mention_seqs, []);
				for (const bad of ["x", [0], undefined, Array.from({ length: 257 }, (_, i) => i + 1)]) {
					await assert.rejects(set(2, bad), (err: Error) => err.name === "ValidationError", `setMentions ${JSON.stringify(bad)?.slice(0, 40)}`);
				}
			});

			it("recordMessage and notificationTargets refuse bad mentions", async () => {
				const [a, b] = [await newUser("iva"), await newUser("ivb")];
				const id = await groupOf(a, [b]);
				const isValidation = (err: Error) => err.name === "ValidationError";
				for (const bad of ["x", [0], [-1], [1.5], ["a"], Array.from({ length: 257 }, (_, i) => i + 1), [{ $gt: 0 }]]) {
					await assert.rejects(record(id, 2, a.id, bad), isValidation, `recordMessage ${JSON.stringify(bad).slice(0, 40)}`);
					await assert.rejects(sys.broker.call("conversations.notificationTargets", { conversationId: id, senderId: a.id, mentions: bad }), isValidation, `notificationTargets ${JSON.stringify(bad).slice(0, 40)}`);
				}
				// 256 is allowed (a full group).
				await record(id, 2, a.id, Array.from({ length: 256 }, (_, i) => i + 1));
			});

			it("notificationTargets: mentions for the members named (muted too), never outsiders or blockers", async () => {
				const [a, b, c, d, out] = [await newUser("ita"), await newUser("itb"), await newUser("itc"), await newUser("itd"), await newUser("ito")];
				const id = await groupOf(a, [b, c, d]);
				assert.equal((await http(base, "POST", `/conversations/${id}/mute`, { token: b.accessToken, body: { muted: true } })).status, 204);
				assert.equal((await http(base, "POST", `/conversations/${id}/mute`, { token: c.accessToken, body: { muted: true } })).status, 204);
				const sd = await connect(d);
				assert.deepEqual(await emitAck(sd, "user:block", { targetUserId: a.id }), { ok: true });
				await waitForEvent(sd, "user:blocked");
				const targets = await sys.broker.call<any, unknown>("conversations.notificationTargets", { conversationId: id, senderId: a.id, mentions: [b.id, d.id, out.id] });
				assert.deepEqual(targets.recipients, [{ userId: b.id, type: "mention" }]);
				const plain = await sys.broker.call<any, unknown>("conversations.notificationTargets", { conversationId: id, senderId: a.id });
				assert.deepEqual(plain.recipients, []);
			});
		});

		describe("conversations.privatePartners", () => {
			it("is the other side of each accepted private chat: not pending, declined or group members; kept current", async () => {
				const [a, b, c, d, e] = [await newUser("ppa"), await newUser("ppb"), await newUser("ppc"), await newUser("ppd"), await newUser("ppe")];
				await privateChat(a, b);
				// Pending (a asked c), declined (d asked a, a declined), and a group with e: none of them.
				const pending = await http(base, "POST", "/conversations", { token: a.accessToken, body: { participantIds: [c.id], isGroup: false } });
				const declined = await http(base, "POST", "/conversations", { token: d.accessToken, body: { participantIds: [a.id], isGroup: false } });
				assert.equal((await http(base, "POST", `/conversations/${declined.body.id}/decline`, { token: a.accessToken })).status, 200);
				assert.equal((await http(base, "POST", "/conversations", { token: a.accessToken, body: { participantIds: [e.id, b.id], isGroup: true, name: "g" } })).status, 201);
				assert.deepEqual(await partnersOf(a), [b.id]);
				assert.deepEqual(await partnersOf(b), [a.id]);
				assert.deepEqual(await partnersOf(c), [], "a pending request makes no partners");
				assert.deepEqual(await partnersOf(d), []);
				assert.deepEqual(await partnersOf(e), [], "a group makes no partners");
				// Read again (from the cache) after c accepts: both lists moved.
				assert.equal((await http(base, "POST", `/conversations/${pending.body.id}/accept`, { token: c.accessToken })).status, 200);
				assert.deepEqual(await partnersOf(a), [b.id, c.id].sort((x, y) => x - y));
				assert.deepEqual(await partnersOf(c), [a.id]);
				// Hiding a private chat does not end it.
				assert.equal((await http(base, "DELETE", `/conversations/${pending.body.id}`, { token: a.accessToken })).status, 204);
				assert.deepEqual(await partnersOf(c), [a.id]);
			});

			it("drops a deleted account on both sides; refuses a bad user id", async () => {
				const [a, b, c] = [await newUser("pda"), await newUser("pdb"), await newUser("pdc")];
				await privateChat(a, b);
				await privateChat(c, a);
				assert.deepEqual(await partnersOf(a), [b.id, c.id].sort((x, y) => x - y));
				assert.deepEqual(await partnersOf(b), [a.id]);
				assert.equal((await http(base, "DELETE", `/users/${b.id}`, { token: b.accessToken })).status, 204);
				await waitFor(async () => (await partnersOf(a)).length === 1, 5000);
				assert.deepEqual(await partnersOf(a), [c.id]);
				assert.deepEqual(await partnersOf(b), [], "a deleted account has no partners");
				for (const userId of ["x", 0, -1, 1.5, null]) {
					await assert.rejects(sys.broker.call("conversations.privatePartners", { userId }), (err: Error) => err.name === "ValidationError", `userId ${String(userId)}`);
				}
				assert.deepEqual(await partnersOf({ id: 987654321 } as User), [], "a user with no chats");
			});
		});
	});
}
