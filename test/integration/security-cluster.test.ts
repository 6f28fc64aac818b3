/**
 * Session ends and socket limits across two gateway nodes and a users node over RabbitMQ, with
 * PostgreSQL: a login that ends on one gateway ends its sockets on every gateway within 2 s, a
 * gateway that starts later still refuses the ended login, the gateways' own actions are not
 * callable from other nodes, and the cap of 20 sockets per user holds per node, or across the
 * gateways with Redis.
 */
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { after, before, describe, it } from "node:test";
import { connectSocket, emitAck, sleep, type TestSocket } from "../helpers/sockets";
import { TEST_REDIS_URL, skipWithoutRedis } from "../helpers/users-cache";
import { createTestDatabase, http, registerUser, skipWithoutAmqp, skipWithoutPostgres, startBroker, TEST_AMQP_URL, tempDir, type RunningSystem, waitFor, waitUntilKnown } from "../helpers/system";

const skip = skipWithoutAmqp || skipWithoutPostgres;
const ADMIN = { email: "clusteradmin@example.test", password: "admin password 1", username: "clusteradmin" };

interface Watched extends TestSocket {
	ended: Promise<{ reason: string | null; at: number }>;
}

describe("security across two gateway nodes over RabbitMQ", { skip }, () => {
	let gw1: RunningSystem;
	let gw2: RunningSystem;
	let users: RunningSystem;
	let late: RunningSystem | null = null;
	let dropDb: () => Promise<void>;
	let shared: Record<string, unknown>;
	const sockets: TestSocket[] = [];

	const watch = async (base: string, token: string, nsp = "/chat"): Promise<Watched> => {
		const s = (await connectSocket(base, token, nsp)) as Watched;
		sockets.push(s);
		let reason: string | null = null;
		s.on("session:ended", (p: { reason: string }) => (reason = p.reason));
		s.ended = new Promise(resolve => s.once("disconnect", () => resolve({ reason, at: Date.now() })));
		return s;
	};
	const within = (s: Watched, ms: number) =>
		Promise.race([
			s.ended,
			sleep(ms).then(() => {
				throw new Error(`still connected after ${ms} ms`);
			}),
		]);

	before(async () => {
		const db = await createTestDatabase();
		dropDb = db.drop;
		process.env.DATABASE_URL = db.url;
		process.env.DATA_DIR = tempDir();
		delete process.env.MONGO_URL;
		process.env.JWT_SECRET = "security-cluster-secret-0123456789";
		process.env.BCRYPT_ROUNDS = "4";
		process.env.RATE_LIMIT = "0";
		process.env.RATE_LIMIT_AUTH = "0";
		process.env.ADMIN_EMAIL = ADMIN.email;
		process.env.ADMIN_PASSWORD = ADMIN.password;
		process.env.ADMIN_USERNAME = ADMIN.username;
		shared = {
			namespace: `parley-sec-${crypto.randomBytes(4).toString("hex")}`,
			transporter: { type: "AMQP", options: { url: TEST_AMQP_URL, socketOptions: { noDelay: true }, prefetch: 100, autoDeleteQueues: 60_000 } },
		};
		users = await startBroker(["users"], shared);
		gw1 = await startBroker(["api"], shared);
		gw2 = await startBroker(["api"], shared);
		for (const gw of [gw1, gw2]) await gw.broker.waitForServices(["users"], 30_000);
		// The users node must know both gateways, or its broadcast reaches only the one it has seen.
		await waitUntilKnown(users, [gw1, gw2]);
	});

	after(async () => {
		for (const s of sockets) s.close();
		await late?.stop();
		await gw1?.stop();
		await gw2?.stop();
		await users?.stop();
		await dropDb?.();
	});

	it("logout on one gateway ends the user's sockets on both within 2 s; the token is refused everywhere", async () => {
		const u = await registerUser(gw1.baseUrl, "clout");
		const [a1, a2, n2] = [await watch(gw1.baseUrl, u.accessToken), await watch(gw2.baseUrl, u.accessToken), await watch(gw2.baseUrl, u.accessToken, "/notifications")];
		const started = Date.now();
		assert.equal((await http(gw1.baseUrl, "POST", "/auth/logout", { body: { refreshToken: u.refreshToken } })).status, 204);
		for (const s of [a1, a2, n2]) {
			const how = await within(s, 2000);
			assert.equal(how.reason, "logout");
			assert.ok(how.at - started < 2000, `ended after ${how.at - started} ms`);
		}
		for (const gw of [gw1, gw2]) {
			assert.equal((await http(gw.baseUrl, "GET", "/users/me", { token: u.accessToken })).status, 401);
			await assert.rejects(connectSocket(gw.baseUrl, u.accessToken), /Unauthorized/);
		}
	});

	it("a password change, a role change and a deleted account end sockets on both gateways", async () => {
		const admin = await http(gw1.baseUrl, "POST", "/auth/login", { body: { email: ADMIN.email, password: ADMIN.password } });
		assert.equal(admin.status, 200, admin.text);
		const [p, r, d] = [await registerUser(gw1.baseUrl, "clpw"), await registerUser(gw1.baseUrl, "clrole"), await registerUser(gw1.baseUrl, "cldel")];
		const [p2, r2, d2] = [await watch(gw2.baseUrl, p.accessToken), await watch(gw2.baseUrl, r.accessToken), await watch(gw2.baseUrl, d.accessToken)];
		assert.equal((await http(gw1.baseUrl, "POST", "/users/change-password", { token: p.accessToken, body: { oldPassword: p.password, newPassword: "another long password" } })).status, 204);
		assert.equal((await http(gw1.baseUrl, "PUT", `/users/${r.id}/roles`, { token: admin.body.accessToken, body: { roles: ["moderator", "user"] } })).status, 200);
		assert.equal((await http(gw1.baseUrl, "DELETE", `/users/${d.id}`, { token: d.accessToken })).status, 204);
		assert.equal((await within(p2, 2000)).reason, "password_changed");
		assert.equal((await within(r2, 2000)).reason, "roles_changed");
		assert.equal((await within(d2, 2000)).reason, "account_deleted");
		for (const token of [p.accessToken, r.accessToken, d.accessToken]) assert.equal((await http(gw2.baseUrl, "GET", "/users/me", { token })).status, 401);
	});

	it("a gateway that starts after a logout still refuses that login", async () => {
		const u = await registerUser(gw1.baseUrl, "cllate");
		assert.equal((await http(gw1.baseUrl, "POST", "/auth/logout", { body: { refreshToken: u.refreshToken } })).status, 204);
		late = await startBroker(["api"], shared);
		await late.broker.waitForServices(["users"], 30_000);
		const base = late.baseUrl;
		await waitFor(async () => (await http(base, "GET", "/users/me", { token: u.accessToken })).status === 401, 10_000);
		await assert.rejects(connectSocket(base, u.accessToken), /Unauthorized/);
	});

	it("the gateways' own actions (broadcast, getClients, listAliases) are not callable from another node", async () => {
		for (const action of ["api.broadcast", "api.getClients", "api.listAliases"]) {
			await assert.rejects(users.broker.call(action, { event: "message:created", args: [{}], room: "user:1" }), (err: Error) => /not (found|available)/i.test(err.message), action);
		}
		// On its own node the gateway still has them (the REPL, tests).
		assert.ok(Array.isArray(await gw1.broker.call("api.getClients", { namespace: "/chat", room: "user:1" })));
	});

	it("holds at most 20 sockets per user per namespace on each gateway node", async () => {
		const u = await registerUser(gw1.baseUrl, "clmany");
		const on1: Watched[] = [];
		for (let i = 0; i < 20; i++) on1.push(await watch(gw1.baseUrl, u.accessToken));
		const on2 = await watch(gw2.baseUrl, u.accessToken);
		await sleep(300);
		assert.ok(on1.every(s => s.connected) && on2.connected, "20 on one node and one on the other are fine");
		await watch(gw1.baseUrl, u.accessToken);
		assert.equal((await within(on1[0], 2000)).reason, "too_many_sockets");
		await sleep(300);
		assert.ok(on2.connected, "the socket on the other gateway stays");
		assert.ok(on1.slice(1).every(s => s.connected));
		assert.equal((await emitAck(on2, "auth:refresh", {})).error?.code, "VALIDATION_ERROR", "still serves events");
	});

	it("with REDIS_URL holds at most 20 sockets per user per namespace across the gateways: the oldest goes, wherever it is", { skip: skipWithoutRedis }, async () => {
		process.env.REDIS_URL = TEST_REDIS_URL;
		process.env.NAMESPACE = shared.namespace as string;
		const shared1 = await startBroker(["api"], shared);
		const shared2 = await startBroker(["api"], shared);
		delete process.env.REDIS_URL;
		delete process.env.NAMESPACE;
		try {
			for (const gw of [shared1, shared2]) await gw.broker.waitForServices(["users"], 30_000);
			await waitUntilKnown(shared1, [shared2]);
			await waitUntilKnown(shared2, [shared1]);
			const u = await registerUser(shared1.baseUrl, "clshared");
			const on1: Watched[] = [];
			for (let i = 0; i < 20; i++) on1.push(await watch(shared1.baseUrl, u.accessToken));
			await sleep(300);
			assert.ok(on1.every(s => s.connected), "20 sockets are fine");
			// The 21st, on the other gateway: the oldest, on the first gateway, is ended by it.
			const on2 = await watch(shared2.baseUrl, u.accessToken);
			assert.equal((await within(on1[0], 2000)).reason, "too_many_sockets");
			await sleep(300);
			assert.ok(on2.connected && on1.slice(1).every(s => s.connected), "only the oldest went");
			// Another on the second gateway: the next oldest goes, and the newest stay.
			const more = await watch(shared2.baseUrl, u.accessToken);
			assert.equal((await within(on1[1], 2000)).reason, "too_many_sockets");
			await sleep(300);
			assert.ok(on2.connected && more.connected && on1.slice(2).every(s => s.connected));
			// A socket that closes frees its place: one more comes in and nobody goes.
			more.close();
			await sleep(300);
			const last = await watch(shared1.baseUrl, u.accessToken);
			await sleep(500);
			assert.ok(last.connected && on2.connected && on1.slice(2).every(s => s.connected), "20 again, nobody ended");
		} finally {
			for (const s of sockets) s.close();
			await shared1.stop();
			await shared2.stop();
		}
	});
});
