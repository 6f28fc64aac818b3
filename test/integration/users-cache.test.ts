/**
 * The users profile cache on one node (gateway, users and files in this process, embedded store):
 * GET /users/me and users.resolve read no SQL for cached users; presentation (email, presence)
 * stays per caller and live; every change of an account is seen at once. Run with the node's
 * in-memory cacher and, when TEST_REDIS_URL is set, with Redis.
 */
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { after, before, describe, it } from "node:test";
import type { ServiceBroker } from "moleculer";
import { connectSocket, type TestSocket } from "../helpers/sockets";
import { http, registerUser, startBroker, storeTestEnv, waitFor, type RunningSystem } from "../helpers/system";
import { countUsersSql, nodeCacher, skipWithoutRedis, type CacheKind, type SqlCounter } from "../helpers/users-cache";

const ADMIN = { email: "cacheadmin@example.test", password: "admin password 1", username: "cacheadmin" };
const PNG = Buffer.from("89504e470d0a1a0a0000000d49484452", "hex");

type Viewer = { id: number; username: string; roles: string[] };
const callAs = (broker: ServiceBroker, action: string, params: object, user: Viewer | null) => broker.call(action, params, { meta: { user } });
const resolve = async (broker: ServiceBroker, ids: number[]) => (await broker.call("users.resolve", { ids })) as any[];

for (const kind of ["memory", "redis"] as CacheKind[]) {
	describe(`users profile cache, one node (${kind})`, { skip: kind === "redis" ? skipWithoutRedis : false }, () => {
		let sys: RunningSystem;
		let base: string;
		let sql: SqlCounter;
		let adminToken: string;
		const sockets: TestSocket[] = [];

		before(async () => {
			storeTestEnv("users-cache-secret-0123456789", null);
			process.env.ADMIN_EMAIL = ADMIN.email;
			process.env.ADMIN_PASSWORD = ADMIN.password;
			process.env.ADMIN_USERNAME = ADMIN.username;
			// Keys of this run only: the embedded store's ids start at 1 in every test process.
			sys = await startBroker(["api", "users", "files"], { cacher: nodeCacher(kind, `parley-test-${crypto.randomBytes(4).toString("hex")}`) });
			base = sys.baseUrl;
			sql = countUsersSql(sys.broker);
			const login = await http(base, "POST", "/auth/login", { body: ADMIN });
			assert.equal(login.status, 200, login.text);
			adminToken = login.body.accessToken;
		});

		after(async () => {
			for (const s of sockets) s.close();
			await sys?.broker.cacher?.clean();
			await sys?.stop();
		});

		it("uses the cacher moleculer.config.ts picks", () => {
			assert.equal(sys.broker.cacher?.constructor.name, kind === "redis" ? "RedisCacher" : "MemoryLRUCacher");
		});

		it("GET /users/me: one query when the profile is not cached, then none", async () => {
			const u = await registerUser(base, "me");
			sql.reset();
			const first = await http(base, "GET", "/users/me", { token: u.accessToken });
			assert.equal(first.status, 200, first.text);
			assert.equal(sql.count, 1, `a miss reads the row and its roles in one query:\n${sql.describe()}`);
			assert.match(sql.statements[0].sql, /FROM users u LEFT JOIN user_role/);
			sql.reset();
			for (let i = 0; i < 5; i++) {
				const me = await http(base, "GET", "/users/me", { token: u.accessToken });
				assert.equal(me.status, 200, me.text);
				assert.deepEqual(me.body, first.body);
			}
			assert.equal(sql.count, 0, `cached: no SQL at all:\n${sql.describe()}`);
			assert.equal(first.body.email, u.email, "the user sees its own email");
			assert.deepEqual(first.body.roles, ["user"]);
		});

		it("users.resolve serves cached profiles per id and reads only the missing ones", async () => {
			const [a, b, c] = [await registerUser(base, "ra"), await registerUser(base, "rb"), await registerUser(base, "rc")];
			await resolve(sys.broker, [a.id, b.id]);
			sql.reset();
			const cached = await resolve(sys.broker, [b.id, a.id, b.id]);
			assert.equal(sql.count, 0, sql.describe());
			assert.deepEqual(
				cached.map(p => p.id),
				[b.id, a.id],
				"in the order asked, each once",
			);
			assert.ok(cached.every(p => !("email" in p)), "no viewer: no email");
			const mixed = await resolve(sys.broker, [a.id, c.id, b.id, 999_999]);
			assert.equal(sql.count, 1, sql.describe());
			assert.deepEqual((sql.statements[0].replacements as { ids: number[] }).ids, [c.id, 999_999], "only the missing ids are read");
			assert.deepEqual(
				mixed.map(p => p.id),
				[a.id, c.id, b.id],
				"an unknown id is left out",
			);
			sql.reset();
			await resolve(sys.broker, [a.id, b.id, c.id]);
			assert.equal(sql.count, 0, sql.describe());
		});

		it("the cache holds the profile, roles and stored last seen: no password hash, no counters, no live status", async () => {
			const u = await registerUser(base, "shape");
			await resolve(sys.broker, [u.id]);
			const entry = (await sys.broker.cacher!.get(`users.profile.v2.${u.id}`)) as Record<string, unknown>;
			assert.deepEqual(Object.keys(entry).sort(), ["at", "avatar_url", "bio", "created_at", "email", "id", "last_seen_at", "roles", "show_last_seen", "updated_at", "username"]);
		});

		it("presents a cached row per caller, with live presence", async () => {
			const a = await registerUser(base, "pa");
			const b = await registerUser(base, "pb");
			await resolve(sys.broker, [a.id, b.id]);
			sql.reset();
			const seenByA = await http(base, "GET", `/users/${b.id}`, { token: a.accessToken });
			assert.equal(seenByA.status, 200);
			assert.equal(seenByA.body.email, undefined, "another user's email is private");
			assert.equal(seenByA.body.status, "offline");
			const seenByAdmin = await http(base, "GET", `/users/${b.id}`, { token: adminToken });
			assert.equal(seenByAdmin.body.email, b.email, "an admin sees it");
			const own = await http(base, "GET", "/users/me", { token: b.accessToken });
			assert.equal(own.body.email, b.email);
			// b comes online: the cached row is the same, its status is not.
			const socket = await connectSocket(base, b.accessToken);
			sockets.push(socket);
			await waitFor(async () => (await resolve(sys.broker, [b.id]))[0].status === "online", 10_000, 50);
			assert.equal((await http(base, "GET", `/users/${b.id}`, { token: a.accessToken })).body.status, "online");
			socket.close();
			await waitFor(async () => (await resolve(sys.broker, [b.id]))[0].status === "offline", 10_000, 50);
			const reads = sql.statements.filter(s => !/^SELECT ur\.user_id, r\.name/.test(s.sql) && !/FROM users u LEFT JOIN/.test(s.sql));
			assert.deepEqual(reads, [], "presence and per-caller presentation need no SQL");
			assert.ok(sql.count <= 1, `at most the admin's own profile was read:\n${sql.describe()}`);
		});

		it("a profile edit, an avatar and an email change show at once in /users/me, users.get and users.resolve", async () => {
			const u = await registerUser(base, "edit");
			const viewer = await registerUser(base, "editview");
			await http(base, "GET", "/users/me", { token: u.accessToken });
			await http(base, "GET", `/users/${u.id}`, { token: viewer.accessToken });
			await resolve(sys.broker, [u.id]);

			const patched = await http(base, "PATCH", `/users/${u.id}`, { token: u.accessToken, body: { bio: "fresh bio", username: `${u.username.slice(0, 24)}_new` } });
			assert.equal(patched.status, 200, patched.text);
			const me = await http(base, "GET", "/users/me", { token: u.accessToken });
			assert.equal(me.body.bio, "fresh bio");
			assert.equal(me.body.username, patched.body.username);
			assert.equal((await http(base, "GET", `/users/${u.id}`, { token: viewer.accessToken })).body.bio, "fresh bio");
			assert.equal((await resolve(sys.broker, [u.id]))[0].username, patched.body.username);

			const avatar = await http(base, "POST", "/users/upload-avatar", { token: u.accessToken, body: { fileName: "me.png", base64: Buffer.concat([PNG, crypto.randomBytes(64)]).toString("base64") } });
			assert.equal(avatar.status, 200, avatar.text);
			assert.equal((await http(base, "GET", "/users/me", { token: u.accessToken })).body.avatar_url, avatar.body.url);
			assert.equal((await resolve(sys.broker, [u.id]))[0].avatar_url, avatar.body.url);

			const email = `new-${u.email}`;
			const moved = await http(base, "PATCH", `/users/${u.id}`, { token: u.accessToken, body: { email, currentPassword: u.password } });
			assert.equal(moved.status, 200, moved.text);
			assert.equal((await http(base, "GET", "/users/me", { token: u.accessToken })).body.email, email);
			assert.equal((await http(base, "GET", `/users/${u.id}`, { token: adminToken })).body.email, email);

			const before = (await resolve(sys.broker, [u.id]))[0].updated_at;
			await new Promise(r => setTimeout(r, 5));
			const changed = await http(base, "POST", "/users/change-password", { token: u.accessToken, body: { oldPassword: u.password, newPassword: "another password 2" } });
			assert.equal(changed.status, 204, changed.text);
			assert.notEqual((await resolve(sys.broker, [u.id]))[0].updated_at, before, "a password change is a change of the row too");
		});

		it("a role removal takes effect at once: roles, and what a demoted admin sees", async () => {
			const u = await registerUser(base, "demote");
			const other = await registerUser(base, "demoteview");
			const promoted = await http(base, "PUT", `/users/${u.id}/roles`, { token: adminToken, body: { roles: ["admin", "user"] } });
			assert.equal(promoted.status, 200, promoted.text);
			const relogin = await http(base, "POST", "/auth/login", { body: { email: u.email, password: u.password } });
			const token = relogin.body.accessToken as string;
			assert.deepEqual((await http(base, "GET", "/users/me", { token })).body.roles, ["admin", "user"]);
			assert.equal((await http(base, "GET", `/users/${other.id}`, { token })).body.email, other.email, "an admin sees emails");
			sql.reset();
			assert.equal((await http(base, "GET", `/users/${other.id}`, { token })).body.email, other.email);
			assert.equal(sql.count, 0, `viewer and viewed both cached:\n${sql.describe()}`);

			const demoted = await http(base, "PUT", `/users/${u.id}/roles`, { token: adminToken, body: { roles: ["user"] } });
			assert.equal(demoted.status, 200, demoted.text);
			assert.deepEqual(demoted.body.roles, ["user"]);
			assert.deepEqual((await resolve(sys.broker, [u.id]))[0].roles, ["user"]);
			// Its token still says admin (as one a gateway has not yet heard about would): the email is hidden all the same.
			const asStale = { id: u.id, username: u.username, roles: ["admin", "user"] };
			assert.equal(((await callAs(sys.broker, "users.get", { id: other.id }, asStale)) as any).email, undefined);
			assert.deepEqual(((await callAs(sys.broker, "users.me", {}, asStale)) as any).roles, ["user"]);
			assert.equal((await http(base, "GET", "/users/me", { token })).status, 401, "the gateway ended that session");
		});

		it("a deleted account is gone at once, by itself or by an admin", async () => {
			for (const by of ["self", "admin"] as const) {
				const u = await registerUser(base, `del${by}`);
				const asU = { id: u.id, username: u.username, roles: ["user"] };
				await http(base, "GET", "/users/me", { token: u.accessToken });
				await resolve(sys.broker, [u.id]);
				const removed = await http(base, "DELETE", `/users/${u.id}`, { token: by === "self" ? u.accessToken : adminToken });
				assert.equal(removed.status, 204, removed.text);
				assert.deepEqual(await resolve(sys.broker, [u.id]), []);
				await assert.rejects(callAs(sys.broker, "users.me", {}, asU), (err: any) => err.code === 401);
				assert.equal((await http(base, "GET", `/users/${u.id}`, { token: adminToken })).status, 404);
				assert.equal((await http(base, "GET", "/users/me", { token: u.accessToken })).status, 401);
			}
		});

		it("a new account replaces whatever a cache held for its id (a Redis that outlived its database)", async () => {
			const last = await registerUser(base, "prev");
			const nextId = last.id + 1;
			const bogus = { id: nextId, username: "ghost", email: "ghost@example.test", avatar_url: null, bio: "stale", roles: ["admin"], last_seen_at: null, show_last_seen: true, created_at: new Date(0).toISOString(), updated_at: new Date(0).toISOString(), at: Date.now() };
			await sys.broker.cacher!.set(`users.profile.v2.${nextId}`, bogus, 60);
			const u = await registerUser(base, "next");
			assert.equal(u.id, nextId, "ids are handed out in order here");
			const me = await http(base, "GET", "/users/me", { token: u.accessToken });
			assert.equal(me.body.username, u.username);
			assert.deepEqual(me.body.roles, ["user"]);
		});
	});
}
