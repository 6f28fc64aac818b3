/**
 * A real cluster: the gateway and two users nodes as separate processes, one Moleculer
 * namespace over RabbitMQ, users on PostgreSQL. Every call crosses the transporter.
 */
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { after, before, describe, it } from "node:test";
import { freePort, startNode, waitForHealth, type NodeProcess } from "../helpers/processes";
import { createTestDatabase, http, newIdentity, registerUser, skipWithoutAmqp, skipWithoutPostgres, TEST_AMQP_URL, tempDir, waitFor } from "../helpers/system";

const skip = skipWithoutAmqp || skipWithoutPostgres;

describe("cluster over RabbitMQ: gateway and users on separate nodes", { skip }, () => {
	const logDir = tempDir("parley-cluster-");
	let dropDb: () => Promise<void>;
	let base: string;
	let api: NodeProcess;
	let users1: NodeProcess;
	let users2: NodeProcess;
	const admin = { email: "cluster-admin@example.test", password: "cluster admin pw" };

	before(async () => {
		const db = await createTestDatabase();
		dropDb = db.drop;
		const port = await freePort();
		base = `http://127.0.0.1:${port}`;
		const shared = {
			TRANSPORTER: TEST_AMQP_URL,
			NAMESPACE: `parley-test-${crypto.randomBytes(4).toString("hex")}`,
			JWT_SECRET: crypto.randomBytes(24).toString("hex"),
			DATABASE_URL: db.url,
			BCRYPT_ROUNDS: "4",
			RATE_LIMIT: "0",
			RATE_LIMIT_AUTH: "0",
		};
		// Two users nodes start at once: they migrate the same empty database and bootstrap
		// the same admin concurrently, which must end in one schema and one admin.
		const usersEnv = { ...shared, SERVICES: "users", ADMIN_EMAIL: admin.email, ADMIN_PASSWORD: admin.password };
		users1 = startNode({ ...usersEnv, DATA_DIR: tempDir() }, logDir, "users1");
		users2 = startNode({ ...usersEnv, DATA_DIR: tempDir() }, logDir, "users2");
		api = startNode({ ...shared, SERVICES: "api", PORT: String(port), DATA_DIR: tempDir() }, logDir, "api");
		await waitForHealth(base, ["api", "users"], 90_000);
		await waitFor(async () => users1.log().includes("Service 'users' started") && users2.log().includes("Service 'users' started"), 90_000);
	});

	after(async () => {
		for (const p of [api, users1, users2]) await p?.stop("SIGKILL");
		await dropDb?.();
	});

	it("the gateway node runs only api; users answers from the other nodes", async () => {
		const health = await http(base, "GET", "/health");
		assert.deepEqual(health.body.services, ["api"]);
		assert.deepEqual(health.body.cluster, ["api", "users"]);
	});

	it("serves the auth and users routes through RabbitMQ, status codes, cookies and errors intact", async () => {
		const u = await registerUser(base, "cl");
		assert.equal(u.res.status, 201, "status set on the remote node reaches the client");
		assert.match(u.res.headers.get("set-cookie") ?? "", /refreshToken=/);
		const me = await http(base, "GET", "/users/me", { token: u.accessToken });
		assert.equal(me.status, 200);
		assert.equal(me.body.id, u.id);
		const refreshed = await http(base, "POST", "/auth/refresh", { body: { refreshToken: u.refreshToken } });
		assert.equal(refreshed.status, 200);
		const reuse = await http(base, "POST", "/auth/refresh", { body: { refreshToken: u.refreshToken } });
		assert.equal(reuse.status, 401);
		const dup = await http(base, "POST", "/auth/register", { body: { ...newIdentity("cl"), username: u.username } });
		assert.equal(dup.status, 409);
		assert.equal(dup.body.code, "CONFLICT");
		const bad = await http(base, "POST", "/auth/register", { body: { username: 1 } });
		assert.equal(bad.status, 400);
		assert.equal(bad.body.code, "VALIDATION_ERROR");
		assert.ok(Array.isArray(bad.body.details));
		const wrong = await http(base, "POST", "/auth/login", { body: { email: u.email, password: "nope nope" } });
		assert.equal(wrong.status, 400);
		assert.equal(wrong.body.code, "INVALID_CREDENTIALS");
	});

	it("bootstrapped exactly one admin from two nodes, and admin checks work across nodes", async () => {
		const login = await http(base, "POST", "/auth/login", { body: admin });
		assert.equal(login.status, 200, login.text);
		assert.deepEqual(login.body.user.roles, ["admin", "user"]);
		const found = await http(base, "GET", `/users/search?q=${encodeURIComponent(admin.email)}`, { token: login.body.accessToken });
		assert.equal(found.body.length, 1);
		const u = await registerUser(base, "clr");
		assert.equal((await http(base, "PUT", `/users/${u.id}/roles`, { token: u.accessToken, body: { roles: ["admin"] } })).status, 403);
		const promoted = await http(base, "PUT", `/users/${u.id}/roles`, { token: login.body.accessToken, body: { roles: ["moderator", "user"] } });
		assert.equal(promoted.status, 200);
		assert.equal(promoted.body.role, "moderator");
	});

	it("keeps answering while one users node stops on SIGTERM, and 503 when none is left", async () => {
		const u = await registerUser(base, "clstop");
		// Requests in flight while one users node is told to stop: none may be lost.
		const inFlight = Array.from({ length: 30 }, () => http(base, "GET", "/users/me", { token: u.accessToken }));
		const stopped = users1.stop("SIGTERM");
		const results = await Promise.all(inFlight);
		assert.deepEqual(results.filter(r => r.status !== 200).map(r => `${r.status} ${r.text}`), []);
		assert.equal((await stopped).code, 0, users1.log().slice(-2000));
		for (let i = 0; i < 10; i++) assert.equal((await http(base, "GET", "/users/me", { token: u.accessToken })).status, 200);

		assert.equal((await users2.stop("SIGTERM")).code, 0);
		const gone = await waitFor(async () => {
			const res = await http(base, "GET", "/users/me", { token: u.accessToken });
			return res.status === 503 ? res : null;
		}, 15_000);
		assert.equal(gone.body.code, "SERVICE_UNAVAILABLE");
		assert.equal((await api.stop("SIGTERM")).code, 0, api.log().slice(-2000));
	});
});
