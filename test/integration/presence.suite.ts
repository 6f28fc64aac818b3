/**
 * Presence and last seen (contract v1.1) over real sockets and HTTP against the real gateway,
 * on the embedded users store and on PostgreSQL (see the presence.*.test.ts runners). The away
 * threshold is 2 s here (PRESENCE_AWAY_SECONDS), so a socket that sends nothing turns `away`.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Sequelize } from "sequelize";
import { connectSocket, emitAck, sleep, type TestSocket } from "../helpers/sockets";
import { createTestDatabase, http, registerUser, startBroker, waitFor, type RunningSystem, baseTestEnv } from "../helpers/system";

const ADMIN = { email: "presence-root@example.test", password: "admin password 1", username: "presenceroot" };
const AWAY_SECONDS = 2;
/** The contract: a change reaches subscribers within 2 s. */
const WITHIN_MS = 2_000;

type Entry = { userId: number; status: "online" | "away" | "offline"; last_seen_at: string | null };
type User = Awaited<ReturnType<typeof registerUser>>;

export function runPresenceSuite(mode: "embedded" | "postgres", skip: string | false = false) {
	describe(`presence and last seen (${mode})`, { skip }, () => {
		let sys: RunningSystem;
		let base: string;
		let dropDb: (() => Promise<void>) | null = null;
		let adminToken: string;
		const sockets: TestSocket[] = [];

		before(async () => {
			baseTestEnv("presence-test-secret-0123456789");
			process.env.PRESENCE_AWAY_SECONDS = String(AWAY_SECONDS);
			process.env.ADMIN_EMAIL = ADMIN.email;
			process.env.ADMIN_PASSWORD = ADMIN.password;
			process.env.ADMIN_USERNAME = ADMIN.username;
			delete process.env.MONGO_URL;
			if (mode === "postgres") {
				const db = await createTestDatabase();
				process.env.DATABASE_URL = db.url;
				dropDb = db.drop;
			} else {
				delete process.env.DATABASE_URL;
			}
			// conversations: blocks and private-chat partners.
			sys = await startBroker(["api", "users", "conversations", "messages"]);
			base = sys.baseUrl;
			const login = await http(base, "POST", "/auth/login", { body: { email: ADMIN.email, password: ADMIN.password } });
			assert.equal(login.status, 200, login.text);
			adminToken = login.body.accessToken;
		});

		after(async () => {
			for (const s of sockets) s.close();
			await sys?.stop();
			await dropDb?.();
			for (const k of ["PRESENCE_AWAY_SECONDS", "ADMIN_EMAIL", "ADMIN_PASSWORD", "ADMIN_USERNAME"]) delete process.env[k];
		});

		const connect = async (u: User) => {
			const s = await connectSocket(base, u.accessToken);
			sockets.push(s);
			return s;
		};
		const subscribe = async (s: TestSocket, userIds: unknown) => {
			const ack = await emitAck<Entry[]>(s, "presence:subscribe", { userIds });
			assert.ok(ack.ok, JSON.stringify(ack.error));
			return ack.data!;
		};
		/** The next presence:changed for `userId` received after `mark` (an index into socket.received) that matches. */
		const presenceAfter = (s: TestSocket, mark: number, userId: number, match: (e: Entry) => boolean = () => true, timeoutMs = WITHIN_MS) =>
			waitFor(async () => s.received.slice(mark).find(r => r.event === "presence:changed" && r.payload.userId === userId && match(r.payload))?.payload as Entry | undefined, timeoutMs, 20);
		const changesFor = (s: TestSocket, mark: number, userId: number) => s.received.slice(mark).filter(r => r.event === "presence:changed" && r.payload.userId === userId).map(r => r.payload as Entry);
		const closeAndWait = async (s: TestSocket) => {
			s.close();
			await sleep(50);
		};
		const getUser = async (token: string, id: number) => {
			const res = await http(base, "GET", `/users/${id}`, { token });
			assert.equal(res.status, 200, res.text);
			return res.body;
		};
		const usersDb = () => (sys.broker.getLocalService("users") as unknown as { sequelize: Sequelize }).sequelize;

		it("subscribe answers the current presence; unknown ids are offline with no last seen", async () => {
			const [a, b, c] = [await registerUser(base, "pa"), await registerUser(base, "pb"), await registerUser(base, "pc")];
			const sa = await connect(a);
			await connect(b);
			const entries = await subscribe(sa, [b.id, c.id, 99_999_999, b.id]);
			assert.deepEqual(entries, [
				{ userId: b.id, status: "online", last_seen_at: null },
				{ userId: c.id, status: "offline", last_seen_at: null },
				{ userId: 99_999_999, status: "offline", last_seen_at: null },
			]);
			assert.deepEqual(await subscribe(sa, []), []);
			const shown = await getUser(a.accessToken, b.id);
			assert.equal(shown.status, "online");
			assert.equal(shown.last_seen_at, null);
			assert.ok(!("show_last_seen" in shown), "another user's setting is not shown");
		});

		it("presence:changed within 2 s of a connect and of a disconnect; last_seen_at is when the last socket closed, and is stored", async () => {
			const [a, c] = [await registerUser(base, "qa"), await registerUser(base, "qc")];
			const sa = await connect(a);
			await subscribe(sa, [c.id]);
			let mark = sa.received.length;
			let t0 = Date.now();
			const sc = await connect(c);
			assert.deepEqual(await presenceAfter(sa, mark, c.id), { userId: c.id, status: "online", last_seen_at: null });
			console.log(`  online reached the subscriber in ${Date.now() - t0} ms`);
			mark = sa.received.length;
			t0 = Date.now();
			sc.close();
			const offline = await presenceAfter(sa, mark, c.id, e => e.status === "offline");
			console.log(`  offline reached the subscriber in ${Date.now() - t0} ms`);
			assert.ok(offline.last_seen_at, "last seen when the socket closed");
			const seen = Date.parse(offline.last_seen_at);
			assert.ok(seen >= t0 - 50 && seen <= Date.now(), `${offline.last_seen_at} is when the socket closed`);
			const shown = await getUser(a.accessToken, c.id);
			assert.equal(shown.status, "offline");
			assert.equal(shown.last_seen_at, offline.last_seen_at);
			// Written to the users table (one UPDATE per offline transition).
			await waitFor(async () => {
				const [row] = (await usersDb().query("SELECT last_seen_at FROM users WHERE id = :id", { replacements: { id: c.id }, type: "SELECT" })) as { last_seen_at: Date | string | null }[];
				return row.last_seen_at !== null && new Date(row.last_seen_at).toISOString() === offline.last_seen_at;
			}, 3_000);
		});

		it("a socket opened and closed within a moment: the subscriber still gets offline, with the new last seen", async () => {
			const [a, c] = [await registerUser(base, "ba"), await registerUser(base, "bc")];
			const sa = await connect(a);
			await subscribe(sa, [c.id]);
			const mark = sa.received.length;
			const t0 = Date.now();
			(await connect(c)).close();
			const offline = await presenceAfter(sa, mark, c.id, e => e.status === "offline");
			assert.ok(offline.last_seen_at && Date.parse(offline.last_seen_at) >= t0 - 50, `${offline.last_seen_at}`);
		});

		it("a user with 3 tabs who closes one stays online; the last one closing makes it offline", async () => {
			const [a, c] = [await registerUser(base, "ta"), await registerUser(base, "tc")];
			const sa = await connect(a);
			await subscribe(sa, [c.id]);
			const tabs = [await connect(c), await connect(c), await connect(c)];
			await presenceAfter(sa, 0, c.id, e => e.status === "online");
			const mark = sa.received.length;
			await closeAndWait(tabs[0]);
			await sleep(800);
			assert.deepEqual(
				changesFor(sa, mark, c.id).filter(e => e.status === "offline"),
				[],
				"no offline while 2 tabs are open",
			);
			assert.notEqual((await getUser(a.accessToken, c.id)).status, "offline");
			await closeAndWait(tabs[1]);
			await closeAndWait(tabs[2]);
			await presenceAfter(sa, mark, c.id, e => e.status === "offline");
		});

		it(`away after ${AWAY_SECONDS} s with no event (last seen: the last event), online again on an event`, async () => {
			const [a, c] = [await registerUser(base, "aa"), await registerUser(base, "ac")];
			const sa = await connect(a);
			await subscribe(sa, [c.id]);
			const sc = await connect(c);
			const lastEvent = Date.now();
			// An event: activity.
			assert.ok((await emitAck(sc, "presence:unsubscribe", { userIds: [] })).ok);
			const mark = sa.received.length;
			const away = await presenceAfter(sa, mark, c.id, e => e.status === "away", (AWAY_SECONDS + 3) * 1000);
			assert.ok(Date.now() - lastEvent >= AWAY_SECONDS * 1000 - 100, "not before the threshold");
			assert.ok(away.last_seen_at && Math.abs(Date.parse(away.last_seen_at) - lastEvent) < 1_000, `last seen ${away.last_seen_at}: the last event`);
			assert.equal((await getUser(a.accessToken, c.id)).status, "away");
			const mark2 = sa.received.length;
			assert.ok((await emitAck(sc, "conversation:list", {})).ok);
			assert.deepEqual(await presenceAfter(sa, mark2, c.id, e => e.status === "online"), { userId: c.id, status: "online", last_seen_at: null });
		});

		it("show_last_seen false hides the last seen both ways: in events, acks and GET /users/:id", async () => {
			const [a, d, c] = [await registerUser(base, "sa"), await registerUser(base, "sd"), await registerUser(base, "sc")];
			const patched = await http(base, "PATCH", "/users/me", { token: d.accessToken, body: { show_last_seen: false } });
			assert.equal(patched.status, 200, patched.text);
			assert.equal(patched.body.show_last_seen, false);
			assert.equal((await getUser(d.accessToken, d.id)).show_last_seen, false, "the user sees its own setting");
			assert.equal((await getUser(adminToken, d.id)).show_last_seen, false, "an admin too");
			assert.ok(!("show_last_seen" in (await getUser(a.accessToken, d.id))));
			// Wrong type: refused.
			const bad = await http(base, "PATCH", "/users/me", { token: d.accessToken, body: { show_last_seen: "no" } });
			assert.equal(bad.status, 400);
			assert.equal(bad.body.code, "VALIDATION_ERROR");

			// d's last seen is hidden from a.
			const sa = await connect(a);
			await subscribe(sa, [d.id]);
			const sd = await connect(d);
			await presenceAfter(sa, 0, d.id, e => e.status === "online");
			const mark = sa.received.length;
			sd.close();
			assert.deepEqual(await presenceAfter(sa, mark, d.id, e => e.status === "offline"), { userId: d.id, status: "offline", last_seen_at: null });
			assert.equal((await getUser(a.accessToken, d.id)).last_seen_at, null);
			assert.ok((await getUser(d.accessToken, d.id)).last_seen_at, "the user itself sees its own");
			assert.deepEqual(await subscribe(sa, [d.id]), [{ userId: d.id, status: "offline", last_seen_at: null }]);

			// And c's is hidden from d (c shows it to everyone else).
			const sc = await connect(c);
			await sleep(100);
			await closeAndWait(sc);
			const sd2 = await connect(d);
			await waitFor(async () => (await getUser(a.accessToken, c.id)).last_seen_at !== null, 3_000);
			assert.deepEqual(await subscribe(sd2, [c.id]), [{ userId: c.id, status: "offline", last_seen_at: null }]);
			assert.equal((await getUser(d.accessToken, c.id)).last_seen_at, null);
			const sc2 = await connect(c);
			await presenceAfter(sd2, 0, c.id, e => e.status === "online");
			const mark2 = sd2.received.length;
			sc2.close();
			assert.deepEqual(await presenceAfter(sd2, mark2, c.id, e => e.status === "offline"), { userId: c.id, status: "offline", last_seen_at: null });

			// Showing it again: a's subscription gets d's presence again, now with the last seen.
			const mark3 = sa.received.length;
			sd2.close();
			await presenceAfter(sa, mark3, d.id, e => e.status === "offline");
			assert.equal((await http(base, "PATCH", "/users/me", { token: d.accessToken, body: { show_last_seen: true } })).status, 200);
			const again = await presenceAfter(sa, mark3, d.id, e => e.status === "offline" && e.last_seen_at !== null);
			assert.ok(again.last_seen_at);
		});

		it("a block either way: each sees the other offline with no last seen", async () => {
			const [a, e] = [await registerUser(base, "ba"), await registerUser(base, "be")];
			const sa = await connect(a);
			const se = await connect(e);
			assert.ok((await emitAck(se, "user:block", { targetUserId: a.id })).ok);
			// Both online, yet offline to each other.
			assert.deepEqual(await subscribe(sa, [e.id]), [{ userId: e.id, status: "offline", last_seen_at: null }]);
			assert.deepEqual(await subscribe(se, [a.id]), [{ userId: a.id, status: "offline", last_seen_at: null }]);
			assert.deepEqual([(await getUser(a.accessToken, e.id)).status, (await getUser(a.accessToken, e.id)).last_seen_at], ["offline", null]);
			assert.deepEqual([(await getUser(e.accessToken, a.id)).status, (await getUser(e.accessToken, a.id)).last_seen_at], ["offline", null]);
			// A change is told as offline with no last seen, both ways.
			let mark = sa.received.length;
			const se2 = await connect(e);
			se.close();
			await sleep(300);
			se2.close();
			await sleep(600);
			assert.ok(changesFor(sa, mark, e.id).length > 0, "the change is told");
			for (const entry of changesFor(sa, mark, e.id)) assert.deepEqual(entry, { userId: e.id, status: "offline", last_seen_at: null });
			assert.equal((await getUser(a.accessToken, e.id)).last_seen_at, null);
			const se3 = await connect(e);
			await subscribe(se3, [a.id]);
			mark = se3.received.length;
			const sa2 = await connect(a);
			sa.close();
			sa2.close();
			await sleep(600);
			assert.ok(changesFor(se3, mark, a.id).length > 0, "the change is told");
			for (const entry of changesFor(se3, mark, a.id)) assert.deepEqual(entry, { userId: a.id, status: "offline", last_seen_at: null });
			// Lifting the block shows the truth again.
			assert.ok((await emitAck(se3, "user:unblock", { targetUserId: a.id })).ok);
			assert.equal((await subscribe(se3, [a.id]))[0].last_seen_at === null, false);
		});

		it("a private-chat partner gets presence:changed without subscribing, once even when it subscribed too", async () => {
			const [f, g] = [await registerUser(base, "pf"), await registerUser(base, "pg")];
			const sg = await connect(g);
			const sf = await connect(f);
			const conv = (await emitAck(sf, "conversation:create", { type: "private", participants: [g.id] })).data;
			assert.ok((await emitAck(sg, "conversation:accept", { conversationId: conv.id })).ok);
			let mark = sg.received.length;
			sf.close();
			await presenceAfter(sg, mark, f.id, e => e.status === "offline");
			// Subscribed as well: each change once.
			await subscribe(sg, [f.id]);
			mark = sg.received.length;
			const sf2 = await connect(f);
			await presenceAfter(sg, mark, f.id, e => e.status === "online");
			await sleep(500);
			assert.equal(changesFor(sg, mark, f.id).filter(e => e.status === "online").length, 1, "once");
			// And the other way round: f gets g's.
			mark = sf2.received.length;
			const sg2 = await connect(g);
			sg.close();
			await sleep(300);
			sg2.close();
			await presenceAfter(sf2, mark, g.id, e => e.status === "offline");
		});

		it("unsubscribe stops the events", async () => {
			const [a, c] = [await registerUser(base, "ua"), await registerUser(base, "uc")];
			const sa = await connect(a);
			await subscribe(sa, [c.id]);
			const ack = await emitAck(sa, "presence:unsubscribe", { userIds: [c.id, 12345] });
			assert.deepEqual(ack, { ok: true });
			const mark = sa.received.length;
			const sc = await connect(c);
			await sleep(800);
			sc.close();
			await sleep(500);
			assert.deepEqual(changesFor(sa, mark, c.id), []);
		});

		it("201 ids, wrong types and too many subscriptions: VALIDATION_ERROR, and the socket stays connected", async () => {
			const a = await registerUser(base, "va");
			const sa = await connect(a);
			const ids = (n: number, from = 1_000_000) => Array.from({ length: n }, (_, i) => from + i);
			for (const payload of [
				{ userIds: ids(201) },
				{ userIds: "1,2" },
				{ userIds: ["a"] },
				{ userIds: [1.5] },
				{ userIds: [-1] },
				{ userIds: [0] },
				{ userIds: [null] },
				{},
			]) {
				const ack = await emitAck(sa, "presence:subscribe", payload);
				assert.equal(ack.ok, false, JSON.stringify(payload));
				assert.equal(ack.error?.code, "VALIDATION_ERROR", JSON.stringify(payload));
				const un = await emitAck(sa, "presence:unsubscribe", payload);
				assert.equal(un.error?.code, "VALIDATION_ERROR", `unsubscribe ${JSON.stringify(payload)}`);
			}
			assert.equal((await emitAck(sa, "presence:subscribe", "not an object")).error?.code, "VALIDATION_ERROR");
			// 200 is the most a call may hold; 1000 the most a socket may hold.
			for (let i = 0; i < 5; i++) assert.equal((await subscribe(sa, ids(200, 2_000_000 + i * 200))).length, 200);
			const over = await emitAck(sa, "presence:subscribe", { userIds: [3_000_000] });
			assert.equal(over.error?.code, "VALIDATION_ERROR");
			// Ids it already has are no more.
			assert.equal((await subscribe(sa, [2_000_000])).length, 1);
			assert.deepEqual(await emitAck(sa, "presence:unsubscribe", { userIds: [2_000_000] }), { ok: true });
			assert.equal((await subscribe(sa, [3_000_000])).length, 1);
			assert.ok(sa.connected);
			assert.ok((await emitAck(sa, "conversation:list", {})).ok, "the socket still works");
		});

		it("a deleted user: its subscribers get offline; afterwards it is offline with no last seen", async () => {
			const [a, h] = [await registerUser(base, "da"), await registerUser(base, "dh")];
			const sa = await connect(a);
			await subscribe(sa, [h.id]);
			const sh = await connect(h);
			await presenceAfter(sa, 0, h.id, e => e.status === "online");
			const mark = sa.received.length;
			assert.equal((await http(base, "DELETE", `/users/${h.id}`, { token: h.accessToken })).status, 204);
			assert.deepEqual(await presenceAfter(sa, mark, h.id, e => e.status === "offline"), { userId: h.id, status: "offline", last_seen_at: null });
			await waitFor(async () => !sh.connected, 3_000);
			assert.deepEqual(await subscribe(sa, [h.id]), [{ userId: h.id, status: "offline", last_seen_at: null }]);
			assert.equal((await http(base, "GET", `/users/${h.id}`, { token: a.accessToken })).status, 404);
		});

	});
}
