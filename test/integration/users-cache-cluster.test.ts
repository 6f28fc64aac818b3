/**
 * The users profile cache across two users nodes and a gateway over RabbitMQ, on PostgreSQL:
 * a change made on one users node is seen at once through the other's users.resolve and
 * through GET /users/me, a role removal and a deletion at once too, and a read that raced a
 * change does not store what it read. With each node's in-memory cache (each node cleans its
 * own, when told by the node that made the change) and, when TEST_REDIS_URL is set, with Redis.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { amqpCluster, clusterTestEnv, http, registerUser, skipWithoutAmqp, skipWithoutPostgres, startBroker, waitUntilKnown, type RunningSystem } from "../helpers/system";
import { countUsersSql, nodeCacher, skipWithoutRedis, type CacheKind, type SqlCounter } from "../helpers/users-cache";

const ADMIN = { email: "cacheclusteradmin@example.test", password: "admin password 1", username: "cacheclusteradmin" };
type Viewer = { id: number; username: string; roles: string[] };

for (const kind of ["memory", "redis"] as CacheKind[]) {
	const skip = skipWithoutAmqp || skipWithoutPostgres || (kind === "redis" ? skipWithoutRedis : false);
	describe(`users profile cache across two users nodes over RabbitMQ (${kind})`, { skip }, () => {
		let gw: RunningSystem;
		let users1: RunningSystem;
		let users2: RunningSystem;
		let sql1: SqlCounter;
		let sql2: SqlCounter;
		let dropDb: () => Promise<void>;
		let admin: Viewer;

		/** Call an action on that users node, for that user (as the gateway would, after its token checks). */
		const on = <T = any>(node: RunningSystem, action: string, params: object, user: Viewer | null = null) =>
			gw.broker.call(action, params, { nodeID: node.broker.nodeID, meta: { user } }) as Promise<T>;
		const resolveOn = (node: RunningSystem, ids: number[]) => on<any[]>(node, "users.resolve", { ids });
		const viewerOf = (u: { id: number; username: string }, roles = ["user"]): Viewer => ({ id: u.id, username: u.username, roles });
		/** Both nodes have these profiles cached. */
		const warm = async (ids: number[]) => {
			for (const node of [users1, users2]) await resolveOn(node, ids);
			sql1.reset();
			sql2.reset();
			for (const node of [users1, users2]) await resolveOn(node, ids);
			assert.equal(sql1.count + sql2.count, 0, `warm on both nodes:\n${sql1.describe()}\n${sql2.describe()}`);
		};

		before(async () => {
			dropDb = await clusterTestEnv("users-cache-cluster-secret-0123456789");
			delete process.env.MONGO_URL;
			process.env.ADMIN_EMAIL = ADMIN.email;
			process.env.ADMIN_PASSWORD = ADMIN.password;
			process.env.ADMIN_USERNAME = ADMIN.username;
			const shared = amqpCluster("parley-cache");
			// As in production: every node gets the configured cacher (with Redis, one shared cache
			// under MOL-<namespace>-; in memory, one per node).
			const nodeOptions = { ...shared, cacher: nodeCacher(kind) };
			users1 = await startBroker(["users"], nodeOptions);
			users2 = await startBroker(["users"], nodeOptions);
			gw = await startBroker(["api"], nodeOptions);
			await gw.broker.waitForServices(["users"], 30_000);
			await waitUntilKnown(gw, [users1, users2]);
			await waitUntilKnown(users1, [users2]);
			await waitUntilKnown(users2, [users1]);
			sql1 = countUsersSql(users1.broker);
			sql2 = countUsersSql(users2.broker);
			const login = await http(gw.baseUrl, "POST", "/auth/login", { body: ADMIN });
			assert.equal(login.status, 200, login.text);
			admin = viewerOf(login.body.user, ["admin", "user"]);
		});

		after(async () => {
			await users1?.broker.cacher?.clean();
			await gw?.stop();
			await users1?.stop();
			await users2?.stop();
			await dropDb?.();
		});

		it("GET /users/me through the gateway reads no SQL on either users node once cached", async () => {
			const u = await registerUser(gw.baseUrl, "cme");
			for (const node of [users1, users2]) await on(node, "users.me", {}, viewerOf(u));
			sql1.reset();
			sql2.reset();
			for (let i = 0; i < 10; i++) assert.equal((await http(gw.baseUrl, "GET", "/users/me", { token: u.accessToken })).status, 200);
			assert.equal(sql1.count + sql2.count, 0, `${sql1.describe()}\n${sql2.describe()}`);
		});

		it(kind === "redis" ? "shares the cache: a profile one node read, the other serves without SQL" : "keeps a cache per node: each node reads a profile once", async () => {
			const u = await registerUser(gw.baseUrl, "cshare");
			await resolveOn(users1, [u.id]);
			sql2.reset();
			await resolveOn(users2, [u.id]);
			assert.equal(sql2.count, kind === "redis" ? 0 : 1, sql2.describe());
		});

		it("a profile change on one node is seen at once through the other node's users.resolve and /users/me", async () => {
			const u = await registerUser(gw.baseUrl, "cedit");
			for (const [writer, reader] of [
				[users1, users2],
				[users2, users1],
			]) {
				await warm([u.id]);
				const bio = `bio from ${writer.broker.nodeID}`;
				const updated = await on(writer, "users.update", { id: u.id, bio }, viewerOf(u));
				assert.equal(updated.bio, bio);
				assert.equal((await resolveOn(reader, [u.id]))[0].bio, bio, "the other node, right after the change answered");
				assert.equal((await on(reader, "users.me", {}, viewerOf(u))).bio, bio);
				const me = await http(gw.baseUrl, "GET", "/users/me", { token: u.accessToken });
				assert.equal(me.body.bio, bio);
			}
			// Through the gateway (either node): the same.
			await warm([u.id]);
			const patched = await http(gw.baseUrl, "PATCH", `/users/${u.id}`, { token: u.accessToken, body: { bio: "via the gateway" } });
			assert.equal(patched.status, 200, patched.text);
			for (const node of [users1, users2]) assert.equal((await resolveOn(node, [u.id]))[0].bio, "via the gateway");
		});

		it("a role removal on one node takes effect at once on the other", async () => {
			const u = await registerUser(gw.baseUrl, "crole");
			const other = await registerUser(gw.baseUrl, "croleview");
			await on(users1, "users.setRoles", { id: u.id, roles: ["admin", "user"] }, admin);
			const asAdminU = viewerOf(u, ["admin", "user"]);
			await warm([u.id, other.id]);
			for (const node of [users1, users2]) assert.equal((await on(node, "users.get", { id: other.id }, asAdminU)).email, other.email);

			const demoted = await on(users1, "users.setRoles", { id: u.id, roles: ["user"] }, admin);
			assert.deepEqual(demoted.roles, ["user"]);
			assert.deepEqual((await resolveOn(users2, [u.id]))[0].roles, ["user"]);
			// A token that still says admin gets no admin view on either node.
			for (const node of [users1, users2]) {
				assert.equal((await on(node, "users.get", { id: other.id }, asAdminU)).email, undefined);
				assert.equal(await on(node, "users.isAdmin", { userId: u.id }), false);
			}
		});

		it("an account deleted on one node is gone at once on the other", async () => {
			const u = await registerUser(gw.baseUrl, "cdel");
			await warm([u.id]);
			for (const node of [users1, users2]) await on(node, "users.me", {}, viewerOf(u));
			await on(users2, "users.remove", { id: u.id }, viewerOf(u));
			for (const node of [users1, users2]) {
				assert.deepEqual(await resolveOn(node, [u.id]), []);
				await assert.rejects(on(node, "users.me", {}, viewerOf(u)), (err: any) => err.code === 401);
			}
		});

		it("a read that raced a change on the other node does not store the old profile", async () => {
			const u = await registerUser(gw.baseUrl, "crace");
			await on(users1, "users.update", { id: u.id, bio: "old" }, viewerOf(u));
			// Not cached on users2 (with Redis, users1 just stored it for both).
			await on(users2, "users.forgetProfiles", { ids: [u.id] });
			// users2 reads the profile (a miss) and is held just after reading "old" …
			const held = sql2.holdNext(/FROM users u LEFT JOIN user_role/);
			const racing = resolveOn(users2, [u.id]);
			await held.reached;
			// … while users1 commits a change (and cleans every node) …
			await on(users1, "users.update", { id: u.id, bio: "new" }, viewerOf(u));
			held.release();
			// … so what users2 read may be answered (it was concurrent), but never cached.
			assert.equal((await racing)[0].bio, "old");
			for (const node of [users1, users2]) assert.equal((await resolveOn(node, [u.id]))[0].bio, "new");
		});
	});
}
