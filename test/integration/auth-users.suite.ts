/**
 * Every auth and users route of the API over real HTTP against the real gateway,
 * run once on the embedded store and once on PostgreSQL (see the *.test.ts files).
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import crypto from "node:crypto";
import jwt from "jsonwebtoken";
import { ServiceBroker, type ServiceSchema } from "moleculer";
import type { SessionRevocation } from "../../lib/session-revocations";
import { connectSocket, call as socketCall, type TestSocket, waitForEvent } from "../helpers/sockets";
import { baseTestEnv, createTestDatabase, http, newIdentity, registerUser, startBroker, tempDir, waitFor, type RunningSystem } from "../helpers/system";

export const TEST_JWT_SECRET = "integration-test-secret-0123456789";
const ADMIN = { email: "root@example.test", password: "admin password 1", username: "rootadmin" };
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** The default ACCESS_TOKEN_TTL: a revocation lasts at least that long. */
const ACCESS_TTL_MS = 900_000;
const PNG = Buffer.from("89504e470d0a1a0a0000000d49484452", "hex");
const PDF = Buffer.from("%PDF-1.7\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n");

type Claims = jwt.JwtPayload & { sid?: string; ver?: number; roles?: string[] };
const claimsOf = (token: string) => jwt.decode(token) as Claims;
const sleep = (ms: number) => new Promise(r => setTimeout(r, ms));

/** Run `fn` with these environment variables (undefined: unset), then put them back. */
async function withEnv<T>(env: Record<string, string | undefined>, fn: () => Promise<T>): Promise<T> {
	const saved = Object.fromEntries(Object.keys(env).map(k => [k, process.env[k]]));
	const apply = (values: Record<string, string | undefined>) => {
		for (const [k, v] of Object.entries(values)) {
			if (v === undefined) delete process.env[k];
			else process.env[k] = v;
		}
	};
	apply(env);
	try {
		return await fn();
	} finally {
		apply(saved);
	}
}

/**
 * A broker with the users service alone, as a `SERVICES=users` node: whether it started, and the
 * fatal lines it logged. A broker that failed to start is stopped (its store released).
 */
async function startUsersNode(): Promise<{ broker: ServiceBroker; error: Error | null; fatal: string[] }> {
	const broker = new ServiceBroker({ logger: false, nodeID: `users-node-${process.pid}-${crypto.randomBytes(3).toString("hex")}`, validator: true });
	const schema = (await import("../../services/users.service")).default as ServiceSchema;
	const svc = broker.createService(schema);
	const fatal: string[] = [];
	svc.logger.fatal = (...args: unknown[]) => void fatal.push(args.map(String).join(" "));
	try {
		await broker.start();
		return { broker, error: null, fatal };
	} catch (err) {
		await broker.stop().catch(() => undefined);
		return { broker, error: err as Error, fatal };
	}
}

/** Start a users node and stop it again: whether it started, and the fatal lines it logged. */
async function tryUsersNode(): Promise<{ error: Error | null; fatal: string[] }> {
	const node = await startUsersNode();
	if (!node.error) await node.broker.stop();
	return { error: node.error, fatal: node.fatal };
}

function assertEnvelope(res: { status: number; body: any; headers: Headers }, status: number, code: string) {
	assert.equal(res.status, status, `expected ${status} ${code}, got ${res.status} ${JSON.stringify(res.body)}`);
	assert.equal(res.body.statusCode, status);
	assert.equal(res.body.code, code);
	assert.equal(typeof res.body.message, "string");
	assert.equal(typeof res.body.traceId, "string");
	assert.equal(res.headers.get("x-trace-id"), res.body.traceId);
	assert.ok(!JSON.stringify(res.body).includes("    at "), "no stack trace in an error");
}

export function runAuthUsersSuite(mode: "embedded" | "postgres", skip: string | false = false) {
	describe(`auth and users (${mode})`, { skip }, () => {
		let sys: RunningSystem;
		let base: string;
		let dropDb: (() => Promise<void>) | null = null;
		let adminToken: string;

		before(async () => {
			baseTestEnv(TEST_JWT_SECRET);
			process.env.ADMIN_EMAIL = ADMIN.email;
			process.env.ADMIN_PASSWORD = ADMIN.password;
			process.env.ADMIN_USERNAME = ADMIN.username;
			if (mode === "postgres") {
				const db = await createTestDatabase();
				process.env.DATABASE_URL = db.url;
				dropDb = db.drop;
			} else {
				delete process.env.DATABASE_URL;
			}
			// files and conversations: avatars are checked and released, blocks hide presence;
			// messages answers the files service's "is this file still used?" too.
			sys = await startBroker(["api", "users", "files", "conversations", "messages"]);
			base = sys.baseUrl;
			const login = await http(base, "POST", "/auth/login", { body: { email: ADMIN.email, password: ADMIN.password } });
			assert.equal(login.status, 200, login.text);
			adminToken = login.body.accessToken;
		});

		after(async () => {
			await sys?.stop();
			await dropDb?.();
		});

		const revocations = async () => (await sys.broker.call("users.revocations")) as SessionRevocation[];
		const loginAs = (u: { email: string; password: string }) => http(base, "POST", "/auth/login", { body: { email: u.email, password: u.password } });
		const uploadImage = async (token: string, data: Buffer = Buffer.concat([PNG, crypto.randomBytes(64)]), fileName = "pic.png") => {
			const res = await http(base, "POST", "/upload/file-base64", { token, body: { fileName, base64: data.toString("base64") } });
			assert.equal(res.status, 201, res.text);
			return res.body as { fileId: string; url: string };
		};
		/** The embedded store is one process's; a test that starts users nodes of its own gets a store of its own. */
		const isolatedStore = async (): Promise<{ env: Record<string, string | undefined>; drop: () => Promise<void> }> => {
			const noAdmin = { ADMIN_EMAIL: undefined, ADMIN_PASSWORD: undefined, ADMIN_USERNAME: undefined };
			if (mode === "postgres") {
				const db = await createTestDatabase();
				return { env: { ...noAdmin, DATABASE_URL: db.url, DATA_DIR: tempDir() }, drop: db.drop };
			}
			return { env: { ...noAdmin, DATABASE_URL: undefined, DATA_DIR: tempDir() }, drop: async () => undefined };
		};

		describe("register", () => {
			it("creates the user, returns tokens and sets the refresh cookie", async () => {
				const id = newIdentity("reg");
				const res = await http(base, "POST", "/auth/register", { body: { ...id, email: id.email.toUpperCase(), confirmPassword: id.password } });
				assert.equal(res.status, 201, res.text);
				const { user, accessToken, refreshToken } = res.body;
				assert.equal(user.id, user.user_id);
				assert.equal(typeof user.id, "number");
				assert.equal(user.username, id.username);
				assert.equal(user.email, id.email.toLowerCase());
				assert.equal(user.role, "user");
				assert.deepEqual(user.roles, ["user"]);
				assert.equal(user.avatar_url, null);
				assert.equal(typeof user.status, "string");
				assert.ok(!Number.isNaN(Date.parse(user.created_at)) && user.created_at.endsWith("Z"));
				assert.ok(!("password_hash" in user) && !("password" in user));
				const claims = jwt.verify(accessToken, TEST_JWT_SECRET) as jwt.JwtPayload;
				assert.equal(claims.sub, String(user.id));
				assert.equal(claims.username, id.username);
				assert.deepEqual(claims.roles, ["user"]);
				assert.ok(typeof claims.iat === "number" && typeof claims.exp === "number" && claims.exp > claims.iat);
				assert.equal(typeof refreshToken, "string");
				const cookie = res.headers.get("set-cookie") ?? "";
				assert.match(cookie, new RegExp(`^refreshToken=${refreshToken};`));
				assert.match(cookie, /HttpOnly/);
				assert.match(cookie, /Path=\/auth/);
			});

			it("refuses a taken username (any case) or email with 409", async () => {
				const u = await registerUser(base, "dup");
				const sameName = await http(base, "POST", "/auth/register", { body: { ...newIdentity("x"), username: u.username.toUpperCase() } });
				assertEnvelope(sameName, 409, "CONFLICT");
				const sameEmail = await http(base, "POST", "/auth/register", { body: { ...newIdentity("x"), email: u.email } });
				assertEnvelope(sameEmail, 409, "CONFLICT");
			});

			it("refuses bad input with VALIDATION_ERROR and the failed fields, never echoing a password", async () => {
				const good = newIdentity("bad");
				const cases: [string, unknown][] = [
					["missing everything", {}],
					["missing password", { username: good.username, email: good.email }],
					["username wrong type", { ...good, username: 12345 }],
					["username too short", { ...good, username: "ab" }],
					["username bad characters", { ...good, username: "../etc/passwd" }],
					["email invalid", { ...good, email: "not-an-email" }],
					["password too short", { ...good, password: "short" }],
					["password wrong type", { ...good, password: { $gt: "" } }],
					["password over 72 bytes", { ...good, password: "é".repeat(40) }],
					["confirmPassword mismatch", { ...good, confirmPassword: "something else" }],
				];
				for (const [label, body] of cases) {
					const res = await http(base, "POST", "/auth/register", { body });
					assertEnvelope(res, 400, "VALIDATION_ERROR");
					assert.ok(Array.isArray(res.body.details) && res.body.details.length > 0, `${label}: details`);
					assert.ok(!res.text.includes(good.password), `${label}: password echoed`);
					assert.ok(!res.text.includes("\"actual\""), `${label}: rejected value echoed`);
				}
			});

			it("answers malformed JSON, a JSON array and an oversized body with 4xx envelopes", async () => {
				const malformed = await http(base, "POST", "/auth/register", { rawBody: '{"username": "a",', headers: { "content-type": "application/json" } });
				assertEnvelope(malformed, 400, "BAD_REQUEST");
				const array = await http(base, "POST", "/auth/register", { body: [1, 2, 3] });
				assertEnvelope(array, 400, "VALIDATION_ERROR");
				const scalar = await http(base, "POST", "/auth/register", { rawBody: '"just a string"', headers: { "content-type": "application/json" } });
				assertEnvelope(scalar, 400, "BAD_REQUEST");
				const huge = await http(base, "POST", "/auth/register", { body: { ...newIdentity("big"), bio: "x".repeat(1024 * 1024 + 10) } });
				assertEnvelope(huge, 413, "PAYLOAD_TOO_LARGE");
			});
		});

		describe("login", () => {
			it("accepts the email (any case) or the username, in either field", async () => {
				const u = await registerUser(base, "login");
				for (const body of [
					{ email: u.email, password: u.password },
					{ email: u.email.toUpperCase(), password: u.password },
					{ username: u.username, password: u.password },
					{ username: u.email, password: u.password },
				]) {
					const res = await http(base, "POST", "/auth/login", { body });
					assert.equal(res.status, 200, `${JSON.stringify(body)}: ${res.text}`);
					assert.equal(res.body.user.id, u.id);
					assert.equal(typeof res.body.accessToken, "string");
					assert.equal(typeof res.body.refreshToken, "string");
					assert.match(res.headers.get("set-cookie") ?? "", /refreshToken=/);
				}
			});

			it("answers wrong credentials with 400 INVALID_CREDENTIALS, the same for an unknown account", async () => {
				const u = await registerUser(base, "wrong");
				assertEnvelope(await http(base, "POST", "/auth/login", { body: { email: u.email, password: "not the password" } }), 400, "INVALID_CREDENTIALS");
				assertEnvelope(await http(base, "POST", "/auth/login", { body: { email: "nobody@example.test", password: "whatever1" } }), 400, "INVALID_CREDENTIALS");
				assertEnvelope(await http(base, "POST", "/auth/login", { body: { password: "whatever1" } }), 400, "VALIDATION_ERROR");
				assertEnvelope(await http(base, "POST", "/auth/login", { body: { email: u.email } }), 400, "VALIDATION_ERROR");
				assertEnvelope(await http(base, "POST", "/auth/login", { body: { email: ["a"], password: 1 } }), 400, "VALIDATION_ERROR");
			});

			it("slows down repeated failed logins for one account with 429 and Retry-After", async () => {
				const u = await registerUser(base, "brute");
				for (let i = 0; i < 5; i++) {
					assertEnvelope(await http(base, "POST", "/auth/login", { body: { email: u.email, password: `wrong-${i}` } }), 400, "INVALID_CREDENTIALS");
				}
				// Even the right password waits now.
				const blocked = await http(base, "POST", "/auth/login", { body: { email: u.email, password: u.password } });
				assertEnvelope(blocked, 429, "RATE_LIMITED");
				assert.ok(Number(blocked.headers.get("retry-after")) >= 1);
				// Another account is not affected.
				const other = await registerUser(base, "bystander");
				assert.equal((await http(base, "POST", "/auth/login", { body: { email: other.email, password: other.password } })).status, 200);
				await new Promise(r => setTimeout(r, 1100));
				const after = await http(base, "POST", "/auth/login", { body: { email: u.email, password: u.password } });
				assert.equal(after.status, 200, after.text);
				// A success resets the counter: one new failure is a plain 400 again.
				assertEnvelope(await http(base, "POST", "/auth/login", { body: { email: u.email, password: "wrong again" } }), 400, "INVALID_CREDENTIALS");
			});

			it("counts parallel wrong passwords one by one: a burst is stopped, the right password waits too", async () => {
				const u = await registerUser(base, "burst");
				const burst = await Promise.all(Array.from({ length: 10 }, (_, i) => http(base, "POST", "/auth/login", { body: { email: u.email, password: `wrong-${i}` } })));
				const statuses = burst.map(r => r.status);
				assert.ok(statuses.every(s => s === 400 || s === 429), `only 400 or 429: ${statuses}`);
				assert.ok(statuses.includes(429), `at least one of 10 parallel guesses is refused with 429: ${statuses}`);
				assert.ok(statuses.filter(s => s === 400).length <= 5, `at most 5 guesses were compared: ${statuses}`);
				const blocked = await loginAs(u);
				assertEnvelope(blocked, 429, "RATE_LIMITED");
				const wait = Number(blocked.headers.get("retry-after"));
				assert.ok(wait >= 1 && wait <= 2, `Retry-After ${wait}`);
				await sleep(wait * 1000 + 100);
				const ok = await loginAs(u);
				assert.equal(ok.status, 200, ok.text);
				// The counter is back at zero: four failures are plain 400s, and the right password still works.
				for (let i = 0; i < 4; i++) assertEnvelope(await http(base, "POST", "/auth/login", { body: { email: u.email, password: `again-${i}` } }), 400, "INVALID_CREDENTIALS");
				assert.equal((await loginAs(u)).status, 200);
			});
		});

		describe("refresh and logout", () => {
			it("rotates: the old token is spent, and reusing it revokes the whole family", async () => {
				const u = await registerUser(base, "rot");
				const first = await http(base, "POST", "/auth/refresh", { body: { refreshToken: u.refreshToken } });
				assert.equal(first.status, 200, first.text);
				assert.equal(typeof first.body.accessToken, "string");
				assert.notEqual(first.body.refreshToken, u.refreshToken);
				assert.match(first.headers.get("set-cookie") ?? "", new RegExp(`refreshToken=${first.body.refreshToken}`));
				const me = await http(base, "GET", "/users/me", { token: first.body.accessToken });
				assert.equal(me.body.id, u.id);

				assertEnvelope(await http(base, "POST", "/auth/refresh", { body: { refreshToken: u.refreshToken } }), 401, "UNAUTHORIZED");
				// The thief's reuse ended the login: the legitimate newest token is dead too.
				assertEnvelope(await http(base, "POST", "/auth/refresh", { body: { refreshToken: first.body.refreshToken } }), 401, "UNAUTHORIZED");
				// Another login of the same user is a separate family and still works.
				const again = await http(base, "POST", "/auth/login", { body: { email: u.email, password: u.password } });
				assert.equal((await http(base, "POST", "/auth/refresh", { body: { refreshToken: again.body.refreshToken } })).status, 200);
			});

			it("reads the refresh token from the cookie", async () => {
				const u = await registerUser(base, "cookie");
				const res = await http(base, "POST", "/auth/refresh", { headers: { cookie: `other=1; refreshToken=${u.refreshToken}` } });
				assert.equal(res.status, 200, res.text);
				assert.equal(typeof res.body.refreshToken, "string");
			});

			it("refuses a missing, unknown or malformed refresh token with 401", async () => {
				assertEnvelope(await http(base, "POST", "/auth/refresh", { body: {} }), 401, "UNAUTHORIZED");
				assertEnvelope(await http(base, "POST", "/auth/refresh", { body: { refreshToken: "nope" } }), 401, "UNAUTHORIZED");
				assertEnvelope(await http(base, "POST", "/auth/refresh", { body: { refreshToken: 42 } }), 400, "VALIDATION_ERROR");
			});

			it("logout answers 204, clears the cookie and ends that refresh token", async () => {
				const u = await registerUser(base, "bye");
				const res = await http(base, "POST", "/auth/logout", { body: { refreshToken: u.refreshToken } });
				assert.equal(res.status, 204);
				assert.equal(res.text, "");
				assert.match(res.headers.get("set-cookie") ?? "", /refreshToken=;.*Max-Age=0/);
				assertEnvelope(await http(base, "POST", "/auth/refresh", { body: { refreshToken: u.refreshToken } }), 401, "UNAUTHORIZED");
				// Logging out twice, or with no token, is harmless.
				assert.equal((await http(base, "POST", "/auth/logout", { body: { refreshToken: u.refreshToken } })).status, 204);
				assert.equal((await http(base, "POST", "/auth/logout")).status, 204);
			});
		});

		describe("sessions that end early", () => {
			it("access tokens name their login (sid, kept by refresh) and the account's token version (ver)", async () => {
				const u = await registerUser(base, "sid");
				const first = claimsOf(u.accessToken);
				assert.match(String(first.sid), UUID);
				assert.equal(first.ver, 0);
				const refreshed = await http(base, "POST", "/auth/refresh", { body: { refreshToken: u.refreshToken } });
				assert.equal(refreshed.status, 200, refreshed.text);
				assert.equal(claimsOf(refreshed.body.accessToken).sid, first.sid, "a refresh stays in the same login");
				const second = claimsOf((await loginAs(u)).body.accessToken);
				assert.match(String(second.sid), UUID);
				assert.notEqual(second.sid, first.sid, "a new login is a new session");
				assert.equal(second.ver, 0);
			});

			it("logout ends that login: recorded for the gateways, its access token and socket refused; another login goes on", async () => {
				const u = await registerUser(base, "out");
				const other = await loginAs(u);
				const sid = claimsOf(u.accessToken).sid;
				const socket = await connectSocket(base, u.accessToken);
				const started = Date.now();
				try {
					assert.equal((await http(base, "POST", "/auth/logout", { body: { refreshToken: u.refreshToken } })).status, 204);
					const mine = (await revocations()).filter(r => r.userId === u.id);
					assert.equal(mine.length, 1, JSON.stringify(mine));
					assert.equal(mine[0].sid, sid);
					assert.equal(mine[0].reason, "logout");
					assert.equal(mine[0].minVersion, undefined);
					assert.ok(!mine[0].all);
					assert.ok(mine[0].until >= started + ACCESS_TTL_MS, "kept until every token of that login has expired");
					// Logging out again records nothing new.
					assert.equal((await http(base, "POST", "/auth/logout", { body: { refreshToken: u.refreshToken } })).status, 204);
					assert.equal((await revocations()).filter(r => r.userId === u.id).length, 1);
					assertEnvelope(await http(base, "GET", "/users/me", { token: u.accessToken }), 401, "UNAUTHORIZED");
					assert.equal((await http(base, "GET", "/users/me", { token: other.body.accessToken })).status, 200, "the other login is not ended");
					assert.equal((await waitForEvent(socket, "session:ended", () => true, 2_000)).reason, "logout");
					await waitFor(async () => !socket.connected, 2_000, 50);
				} finally {
					socket.disconnect();
				}
			});

			it("logout with only the bearer token ends that login, its refresh token too", async () => {
				const u = await registerUser(base, "bear");
				const res = await http(base, "POST", "/auth/logout", { token: u.accessToken });
				assert.equal(res.status, 204);
				const mine = (await revocations()).filter(r => r.userId === u.id);
				assert.deepEqual(
					mine.map(r => [r.sid, r.reason]),
					[[claimsOf(u.accessToken).sid, "logout"]],
				);
				assertEnvelope(await http(base, "POST", "/auth/refresh", { body: { refreshToken: u.refreshToken } }), 401, "UNAUTHORIZED");
				assertEnvelope(await http(base, "GET", "/users/me", { token: u.accessToken }), 401, "UNAUTHORIZED");
			});

			it("a spent refresh token presented again ends the access tokens of that login too", async () => {
				const u = await registerUser(base, "reuse");
				const first = await http(base, "POST", "/auth/refresh", { body: { refreshToken: u.refreshToken } });
				assert.equal(first.status, 200);
				assertEnvelope(await http(base, "POST", "/auth/refresh", { body: { refreshToken: u.refreshToken } }), 401, "UNAUTHORIZED");
				const mine = (await revocations()).filter(r => r.userId === u.id);
				assert.deepEqual(
					mine.map(r => [r.sid, r.reason]),
					[[claimsOf(u.accessToken).sid, "token_reuse"]],
				);
				assertEnvelope(await http(base, "GET", "/users/me", { token: first.body.accessToken }), 401, "UNAUTHORIZED");
			});

			it("a password change ends every access token of the account, the caller's own too", async () => {
				const u = await registerUser(base, "pwend");
				const other = await loginAs(u);
				const res = await http(base, "POST", "/users/change-password", { token: u.accessToken, body: { oldPassword: u.password, newPassword: "brand new password" } });
				assert.equal(res.status, 204, res.text);
				const mine = (await revocations()).filter(r => r.userId === u.id);
				assert.deepEqual(
					mine.map(r => [r.reason, r.minVersion, r.sid]),
					[["password_changed", 1, undefined]],
				);
				const fresh = await loginAs({ email: u.email, password: "brand new password" });
				assert.equal(fresh.status, 200, fresh.text);
				assert.equal(claimsOf(fresh.body.accessToken).ver, 1);
				assert.equal((await http(base, "GET", "/users/me", { token: fresh.body.accessToken })).status, 200);
				assertEnvelope(await http(base, "GET", "/users/me", { token: u.accessToken }), 401, "UNAUTHORIZED");
				assertEnvelope(await http(base, "GET", "/users/me", { token: other.body.accessToken }), 401, "UNAUTHORIZED");
			});

			it("a real role change ends the tokens issued before; a refresh gives the new roles; no change, no revocation", async () => {
				const u = await registerUser(base, "rolend");
				const same = await http(base, "PUT", `/users/${u.id}/roles`, { token: adminToken, body: { roles: ["user"] } });
				assert.equal(same.status, 200, same.text);
				assert.deepEqual((await revocations()).filter(r => r.userId === u.id), [], "the same roles again change nothing");
				assert.equal((await http(base, "GET", "/users/me", { token: u.accessToken })).status, 200);
				const changed = await http(base, "PUT", `/users/${u.id}/roles`, { token: adminToken, body: { roles: ["moderator", "user"] } });
				assert.equal(changed.status, 200, changed.text);
				const mine = (await revocations()).filter(r => r.userId === u.id);
				assert.deepEqual(
					mine.map(r => [r.reason, r.minVersion]),
					[["roles_changed", 1]],
				);
				const refreshed = await http(base, "POST", "/auth/refresh", { body: { refreshToken: u.refreshToken } });
				assert.equal(refreshed.status, 200, "the refresh token stays valid");
				const claims = claimsOf(refreshed.body.accessToken);
				assert.deepEqual(claims.roles, ["moderator", "user"]);
				assert.equal(claims.ver, 1);
				assert.equal((await http(base, "GET", "/users/me", { token: refreshed.body.accessToken })).status, 200);
				assertEnvelope(await http(base, "GET", "/users/me", { token: u.accessToken }), 401, "UNAUTHORIZED");
			});

			it("deleting an account ends all its tokens and sockets", async () => {
				const u = await registerUser(base, "gone");
				const socket = await connectSocket(base, u.accessToken);
				try {
					assert.equal((await http(base, "DELETE", `/users/${u.id}`, { token: u.accessToken })).status, 204);
					const mine = (await revocations()).filter(r => r.userId === u.id);
					assert.deepEqual(
						mine.map(r => [r.reason, r.all]),
						[["account_deleted", true]],
					);
					assert.ok(mine[0].until > Date.now());
					assert.equal((await waitForEvent(socket, "session:ended", () => true, 2_000)).reason, "account_deleted");
					assertEnvelope(await http(base, "GET", "/users", { token: u.accessToken }), 401, "UNAUTHORIZED");
				} finally {
					socket.disconnect();
				}
			});
		});

		describe("users", () => {
			it("GET /users/me returns the caller with its email", async () => {
				const u = await registerUser(base, "me");
				const res = await http(base, "GET", "/users/me", { token: u.accessToken });
				assert.equal(res.status, 200);
				assert.equal(res.body.id, u.id);
				assert.equal(res.body.email, u.email.toLowerCase());
			});

			it("GET /users pages newest first, filters by search, and hides others' emails", async () => {
				const tag = `pg${Date.now().toString(36)}`;
				const made = [];
				for (let i = 0; i < 3; i++) {
					const res = await http(base, "POST", "/auth/register", { body: { username: `${tag}_${i}`, email: `${tag}${i}@example.test`, password: "password 123" } });
					assert.equal(res.status, 201);
					made.push(res.body);
				}
				const viewer = made[0];
				const page1 = await http(base, "GET", `/users?search=${tag}&limit=2&page=1`, { token: viewer.accessToken });
				assert.equal(page1.status, 200, page1.text);
				assert.equal(page1.body.total, 3);
				assert.equal(page1.body.page, 1);
				assert.equal(page1.body.limit, 2);
				assert.equal(page1.body.totalPages, 2);
				assert.deepEqual(
					page1.body.data.map((u: any) => u.username),
					[`${tag}_2`, `${tag}_1`],
				);
				assert.ok(page1.body.data.every((u: any) => !("email" in u)), "other users' emails are hidden");
				const page2 = await http(base, "GET", `/users?search=${tag}&limit=2&page=2`, { token: viewer.accessToken });
				assert.deepEqual(page2.body.data.map((u: any) => u.username), [`${tag}_0`]);
				assert.equal(page2.body.data[0].email, `${tag}0@example.test`, "own email is shown");
				const asAdmin = await http(base, "GET", `/users?search=${tag}`, { token: adminToken });
				assert.ok(asAdmin.body.data.every((u: any) => typeof u.email === "string"), "admins see emails");
				const all = await http(base, "GET", "/users", { token: viewer.accessToken });
				assert.equal(all.body.limit, 50);
				assert.ok(all.body.total >= 4);
				// LIKE wildcards in the search are literal.
				const wild = await http(base, "GET", "/users?search=%25", { token: viewer.accessToken });
				assert.equal(wild.body.total, 0);
				assertEnvelope(await http(base, "GET", "/users?limit=101", { token: viewer.accessToken }), 400, "VALIDATION_ERROR");
				assertEnvelope(await http(base, "GET", "/users?page=0", { token: viewer.accessToken }), 400, "VALIDATION_ERROR");
				assertEnvelope(await http(base, "GET", "/users?limit=abc", { token: viewer.accessToken }), 400, "VALIDATION_ERROR");
			});

			it("GET /users/search matches username prefixes; an email prefix only for admins", async () => {
				const tag = `sr${Date.now().toString(36)}`;
				const a = await http(base, "POST", "/auth/register", { body: { username: `${tag}alpha`, email: `zz${tag}@example.test`, password: "password 123" } });
				const b = await http(base, "POST", "/auth/register", { body: { username: `other${tag}`, email: `${tag}mail@example.test`, password: "password 123" } });
				const token = a.body.accessToken;
				const res = await http(base, "GET", `/users/search?q=${tag.toUpperCase()}`, { token });
				assert.equal(res.status, 200, res.text);
				assert.deepEqual(res.body.map((u: any) => u.id), [a.body.user.id], "username prefix only");
				const asAdmin = await http(base, "GET", `/users/search?q=${tag.toUpperCase()}`, { token: adminToken });
				const ids = asAdmin.body.map((u: any) => u.id).sort();
				assert.deepEqual(ids, [a.body.user.id, b.body.user.id].sort(), "for an admin, username prefix and email prefix both match");
				const none = await http(base, "GET", `/users/search?q=${tag.slice(2)}`, { token });
				assert.ok(!none.body.some((u: any) => u.id === a.body.user.id), "not a substring match");
				const limited = await http(base, "GET", `/users/search?q=${tag}&limit=1`, { token: adminToken });
				assert.equal(limited.body.length, 1);
				assertEnvelope(await http(base, "GET", "/users/search", { token }), 400, "VALIDATION_ERROR");
			});

			it("GET /users/:id returns public fields; 404 for an unknown id, 400 for a bad one", async () => {
				const a = await registerUser(base, "ga");
				const b = await registerUser(base, "gb");
				const res = await http(base, "GET", `/users/${b.id}`, { token: a.accessToken });
				assert.equal(res.status, 200);
				assert.equal(res.body.username, b.username);
				assert.ok(!("email" in res.body));
				assertEnvelope(await http(base, "GET", "/users/99999999", { token: a.accessToken }), 404, "NOT_FOUND");
				assertEnvelope(await http(base, "GET", "/users/abc", { token: a.accessToken }), 400, "VALIDATION_ERROR");
				assertEnvelope(await http(base, "GET", "/users/-3", { token: a.accessToken }), 400, "VALIDATION_ERROR");
			});

			it("POST /users/batch returns the users asked for, in that order", async () => {
				const a = await registerUser(base, "ba");
				const b = await registerUser(base, "bb");
				const res = await http(base, "POST", "/users/batch", { token: a.accessToken, body: { ids: [b.id, 99999999, a.id, b.id] } });
				assert.equal(res.status, 200);
				assert.deepEqual(res.body.map((u: any) => u.id), [b.id, a.id]);
				assert.deepEqual((await http(base, "POST", "/users/batch", { token: a.accessToken, body: { ids: [] } })).body, []);
				assertEnvelope(await http(base, "POST", "/users/batch", { token: a.accessToken, body: { ids: "1,2" } }), 400, "VALIDATION_ERROR");
				assertEnvelope(await http(base, "POST", "/users/batch", { token: a.accessToken, body: { ids: ["x"] } }), 400, "VALIDATION_ERROR");
				assertEnvelope(await http(base, "POST", "/users/batch", { token: a.accessToken, body: { ids: Array.from({ length: 101 }, (_, i) => i + 1) } }), 400, "VALIDATION_ERROR");
			});

			it("PUT and PATCH /users/:id: self or admin only, conflicts are 409", async () => {
				const a = await registerUser(base, "ua");
				const b = await registerUser(base, "ub");
				const put = await http(base, "PUT", `/users/${a.id}`, { token: a.accessToken, body: { bio: "hello", avatar_url: null } });
				assert.equal(put.status, 200, put.text);
				assert.equal(put.body.bio, "hello");
				assert.equal(put.body.avatar_url, null);
				const newName = `${a.username.slice(0, 28)}_new`;
				const patch = await http(base, "PATCH", `/users/${a.id}`, { token: a.accessToken, body: { username: newName } });
				assert.equal(patch.status, 200, patch.text);
				assert.equal(patch.body.username, newName);
				assert.equal(patch.body.bio, "hello", "PATCH keeps other fields");
				assertEnvelope(await http(base, "PATCH", `/users/${b.id}`, { token: a.accessToken, body: { bio: "hacked" } }), 403, "FORBIDDEN");
				assertEnvelope(await http(base, "PATCH", `/users/${a.id}`, { token: a.accessToken, body: { username: b.username } }), 409, "CONFLICT");
				assertEnvelope(await http(base, "PATCH", `/users/${a.id}`, { token: a.accessToken, body: { email: b.email, currentPassword: a.password } }), 409, "CONFLICT");
				assertEnvelope(await http(base, "PATCH", `/users/${a.id}`, { token: a.accessToken, body: { avatar_url: "javascript:alert(1)" } }), 400, "VALIDATION_ERROR");
				assertEnvelope(await http(base, "PATCH", `/users/${a.id}`, { token: a.accessToken, body: { username: 5 } }), 400, "VALIDATION_ERROR");
				assertEnvelope(await http(base, "PATCH", `/users/${a.id}`, { token: a.accessToken, body: { bio: "x".repeat(501) } }), 400, "VALIDATION_ERROR");
				const byAdmin = await http(base, "PATCH", `/users/${b.id}`, { token: adminToken, body: { bio: null } });
				assert.equal(byAdmin.status, 200);
				assert.equal(byAdmin.body.email, b.email.toLowerCase(), "admin sees the email");
				assertEnvelope(await http(base, "PATCH", "/users/99999999", { token: adminToken, body: { bio: "x" } }), 404, "NOT_FOUND");
			});

			it("DELETE /users/:id: self or admin only; the account and its logins are gone", async () => {
				const a = await registerUser(base, "da");
				const b = await registerUser(base, "db");
				assertEnvelope(await http(base, "DELETE", `/users/${b.id}`, { token: a.accessToken }), 403, "FORBIDDEN");
				const self = await http(base, "DELETE", `/users/${a.id}`, { token: a.accessToken });
				assert.equal(self.status, 204);
				assertEnvelope(await http(base, "GET", `/users/${a.id}`, { token: b.accessToken }), 404, "NOT_FOUND");
				assertEnvelope(await http(base, "GET", "/users/me", { token: a.accessToken }), 401, "UNAUTHORIZED");
				assertEnvelope(await http(base, "POST", "/auth/refresh", { body: { refreshToken: a.refreshToken } }), 401, "UNAUTHORIZED");
				assertEnvelope(await http(base, "POST", "/auth/login", { body: { email: a.email, password: a.password } }), 400, "INVALID_CREDENTIALS");
				assert.equal((await http(base, "DELETE", `/users/${b.id}`, { token: adminToken })).status, 204);
				assertEnvelope(await http(base, "DELETE", `/users/${b.id}`, { token: adminToken }), 404, "NOT_FOUND");
			});

			it("POST /users/change-password checks the old one and ends every login", async () => {
				const u = await registerUser(base, "pw");
				assertEnvelope(await http(base, "POST", "/users/change-password", { token: u.accessToken, body: { oldPassword: "wrong one", newPassword: "new password 1" } }), 400, "INVALID_CREDENTIALS");
				assertEnvelope(await http(base, "POST", "/users/change-password", { token: u.accessToken, body: { oldPassword: u.password, newPassword: "short" } }), 400, "VALIDATION_ERROR");
				assertEnvelope(await http(base, "POST", "/users/change-password", { token: u.accessToken, body: { oldPassword: u.password } }), 400, "VALIDATION_ERROR");
				const ok = await http(base, "POST", "/users/change-password", { token: u.accessToken, body: { oldPassword: u.password, newPassword: "new password 1" } });
				assert.equal(ok.status, 204, ok.text);
				assertEnvelope(await http(base, "POST", "/auth/refresh", { body: { refreshToken: u.refreshToken } }), 401, "UNAUTHORIZED");
				assertEnvelope(await http(base, "POST", "/auth/login", { body: { email: u.email, password: u.password } }), 400, "INVALID_CREDENTIALS");
				assert.equal((await http(base, "POST", "/auth/login", { body: { email: u.email, password: "new password 1" } })).status, 200);
			});
		});

		describe("email change", () => {
			it("a new email needs the caller's current password; other fields and the same email do not", async () => {
				const u = await registerUser(base, "mail");
				const newEmail = `new.${u.email}`;
				const missing = await http(base, "PATCH", `/users/${u.id}`, { token: u.accessToken, body: { email: newEmail } });
				assertEnvelope(missing, 400, "VALIDATION_ERROR");
				assert.deepEqual(missing.body.details.map((d: any) => d.field), ["currentPassword"]);
				assertEnvelope(await http(base, "PUT", `/users/${u.id}`, { token: u.accessToken, body: { email: newEmail, bio: "half" } }), 400, "VALIDATION_ERROR");
				assertEnvelope(await http(base, "PATCH", `/users/${u.id}`, { token: u.accessToken, body: { email: newEmail, currentPassword: "not my password" } }), 400, "INVALID_CREDENTIALS");
				let me = await http(base, "GET", "/users/me", { token: u.accessToken });
				assert.equal(me.body.email, u.email.toLowerCase(), "unchanged");
				assert.equal(me.body.bio, null, "nothing half-written");
				// The same address (in any case) and other fields need no password.
				assert.equal((await http(base, "PATCH", `/users/${u.id}`, { token: u.accessToken, body: { email: u.email.toUpperCase(), bio: "same mail" } })).status, 200);
				const ok = await http(base, "PATCH", `/users/${u.id}`, { token: u.accessToken, body: { email: newEmail.toUpperCase(), currentPassword: u.password } });
				assert.equal(ok.status, 200, ok.text);
				assert.equal(ok.body.email, newEmail.toLowerCase());
				me = await http(base, "GET", "/users/me", { token: u.accessToken });
				assert.equal(me.body.email, newEmail.toLowerCase());
				assert.equal((await loginAs({ email: newEmail, password: u.password })).status, 200);
			});

			it("an admin changing another account's email gives the admin's own password", async () => {
				const u = await registerUser(base, "mailb");
				const newEmail = `moved.${u.email}`;
				assertEnvelope(await http(base, "PATCH", `/users/${u.id}`, { token: adminToken, body: { email: newEmail } }), 400, "VALIDATION_ERROR");
				assertEnvelope(await http(base, "PATCH", `/users/${u.id}`, { token: adminToken, body: { email: newEmail, currentPassword: u.password } }), 400, "INVALID_CREDENTIALS");
				const ok = await http(base, "PATCH", `/users/${u.id}`, { token: adminToken, body: { email: newEmail, currentPassword: ADMIN.password } });
				assert.equal(ok.status, 200, ok.text);
				assert.equal(ok.body.email, newEmail.toLowerCase());
			});
		});

		describe("search privacy", () => {
			it("GET /users/search and GET /users?search=: no email by its prefix; the whole address finds the user, without the email", async () => {
				const tag = `pv${Date.now().toString(36)}${crypto.randomBytes(2).toString("hex")}`;
				const hidden = await http(base, "POST", "/auth/register", { body: { username: `u${tag}`, email: `m${tag}secret@example.test`, password: "password 123" } });
				assert.equal(hidden.status, 201, hidden.text);
				const id = hidden.body.user.id;
				const viewer = await registerUser(base, "pvv");
				const token = viewer.accessToken;
				for (const prefix of [`m${tag}`, `m${tag}secret@`, `m${tag}secret@example.tes`]) {
					const q = encodeURIComponent(prefix);
					const found = await http(base, "GET", `/users/search?q=${q}`, { token });
					assert.equal(found.status, 200, found.text);
					assert.ok(!found.body.some((u: any) => u.id === id), `search: prefix ${prefix} of an email finds nothing`);
					const listed = await http(base, "GET", `/users?search=${q}`, { token });
					assert.equal(listed.status, 200, listed.text);
					assert.equal(listed.body.total, 0, `list: prefix ${prefix} of an email finds nothing`);
				}
				const whole = encodeURIComponent(`M${tag}SECRET@example.test`);
				const found = await http(base, "GET", `/users/search?q=${whole}`, { token });
				assert.deepEqual(found.body.map((u: any) => u.id), [id], "the whole address finds the user");
				assert.ok(!("email" in found.body[0]), "without showing the email");
				const listed = await http(base, "GET", `/users?search=${whole}`, { token });
				assert.deepEqual(listed.body.data.map((u: any) => u.id), [id]);
				assert.ok(!("email" in listed.body.data[0]));
				// Usernames: by prefix, not by any part.
				assert.deepEqual((await http(base, "GET", `/users?search=u${tag.slice(0, 6)}`, { token })).body.data.map((u: any) => u.id), [id]);
				assert.equal((await http(base, "GET", `/users?search=${tag}`, { token })).body.total, 0, "GET /users matches a username prefix, not a substring");
				// An admin finds the email by its prefix, and sees it.
				const asAdmin = await http(base, "GET", `/users?search=m${tag}`, { token: adminToken });
				assert.deepEqual(asAdmin.body.data.map((u: any) => u.email), [`m${tag}secret@example.test`]);
			});
		});

		describe("avatars", () => {
			it("avatar_url takes only /files/<id> of an image the caller uploaded, or null", async () => {
				const a = await registerUser(base, "ava");
				const b = await registerUser(base, "avb");
				const mine = await uploadImage(a.accessToken);
				const theirs = await uploadImage(b.accessToken);
				const pdf = await uploadImage(a.accessToken, PDF, "doc.pdf");
				const refused = [
					"https://example.test/a.png",
					"//evil.example/a.png",
					"javascript:alert(1)",
					"/files/../../etc/passwd",
					`/files/${mine.fileId.toUpperCase()}`,
					`${base}/files/${mine.fileId}`,
					mine.fileId,
					`/files/${mine.fileId}?v=2`,
					`/files/${crypto.randomBytes(16).toString("hex")}`,
					pdf.url,
				];
				for (const avatar_url of refused) {
					const res = await http(base, "PATCH", `/users/${a.id}`, { token: a.accessToken, body: { avatar_url, bio: "not written" } });
					assertEnvelope(res, 400, "VALIDATION_ERROR");
					assert.equal(res.body.details?.[0]?.field, "avatar_url", `${avatar_url}: ${res.text}`);
				}
				assertEnvelope(await http(base, "PATCH", `/users/${a.id}`, { token: a.accessToken, body: { avatar_url: theirs.url } }), 403, "FORBIDDEN");
				const me = await http(base, "GET", "/users/me", { token: a.accessToken });
				assert.equal(me.body.avatar_url, null, "unchanged");
				assert.equal(me.body.bio, null, "nothing half-written");
				const ok = await http(base, "PATCH", `/users/${a.id}`, { token: a.accessToken, body: { avatar_url: ` ${mine.url} ` } });
				assert.equal(ok.status, 200, ok.text);
				assert.equal(ok.body.avatar_url, mine.url);
				assert.equal((await http(base, "GET", `/users/${a.id}`, { token: b.accessToken })).body.avatar_url, mine.url);
				// An admin may PUT the whole profile back, avatar included (not the admin's file, but unchanged).
				const put = await http(base, "PUT", `/users/${a.id}`, { token: adminToken, body: { avatar_url: mine.url, bio: "set by admin" } });
				assert.equal(put.status, 200, put.text);
				assert.equal(put.body.avatar_url, mine.url);
				assert.deepEqual(await sys.broker.call("users.fileRefs", { fileIds: [mine.fileId, theirs.fileId, "not-an-id"] }), [mine.fileId]);
			});

			it("a replaced or cleared avatar, and a deleted account's, is released (deleted when nothing else uses it)", async () => {
				const u = await registerUser(base, "rel");
				const first = await uploadImage(u.accessToken);
				const second = await uploadImage(u.accessToken);
				const third = await uploadImage(u.accessToken);
				const gone = (url: string) => waitFor(async () => (await http(base, "GET", url)).status === 404, 5_000, 50);
				assert.equal((await http(base, "PATCH", `/users/${u.id}`, { token: u.accessToken, body: { avatar_url: first.url } })).status, 200);
				assert.equal((await http(base, "PATCH", `/users/${u.id}`, { token: u.accessToken, body: { avatar_url: second.url } })).status, 200);
				await gone(first.url);
				assert.equal((await http(base, "GET", second.url)).status, 200, "the avatar in use stays");
				const cleared = await http(base, "PATCH", `/users/${u.id}`, { token: u.accessToken, body: { avatar_url: "" } });
				assert.equal(cleared.status, 200);
				assert.equal(cleared.body.avatar_url, null);
				await gone(second.url);
				assert.equal((await http(base, "PATCH", `/users/${u.id}`, { token: u.accessToken, body: { avatar_url: third.url } })).status, 200);
				const uploaded = await http(base, "POST", "/users/upload-avatar", { token: u.accessToken, body: { fileName: "me.png", base64: Buffer.concat([PNG, crypto.randomBytes(64)]).toString("base64") } });
				assert.equal(uploaded.status, 200, uploaded.text);
				assert.match(uploaded.body.user.avatar_url, /^\/files\/[a-f0-9]{32}$/);
				await gone(third.url);
				assert.equal((await http(base, "DELETE", `/users/${u.id}`, { token: u.accessToken })).status, 204);
				await gone(uploaded.body.user.avatar_url);
			});
		});

		describe("presence and blocks", () => {
			it("users with a block between them see each other offline; others still see them online", async () => {
				const a = await registerUser(base, "pa");
				const b = await registerUser(base, "pb");
				const c = await registerUser(base, "pc");
				const sockets: TestSocket[] = [await connectSocket(base, a.accessToken), await connectSocket(base, b.accessToken)];
				const statusOf = async (viewer: { accessToken: string }, id: number) => (await http(base, "GET", `/users/${id}`, { token: viewer.accessToken })).body.status;
				try {
					await waitFor(async () => (await statusOf(c, a.id)) === "online" && (await statusOf(c, b.id)) === "online");
					assert.equal(await statusOf(a, b.id), "online");
					await socketCall(sockets[1], "user:block", { targetUserId: a.id });
					assert.equal(await statusOf(a, b.id), "offline", "the blocked user does not see its blocker online");
					assert.equal(await statusOf(b, a.id), "offline", "nor the blocker the blocked user");
					assert.equal(await statusOf(c, a.id), "online");
					assert.equal(await statusOf(c, b.id), "online");
					const batch = await http(base, "POST", "/users/batch", { token: a.accessToken, body: { ids: [b.id, c.id] } });
					assert.deepEqual(batch.body.map((u: any) => u.status), ["offline", "offline"]);
					const search = await http(base, "GET", `/users/search?q=${b.username}`, { token: a.accessToken });
					assert.equal(search.body.find((u: any) => u.id === b.id)?.status, "offline");
					assert.equal((await http(base, "GET", "/users/me", { token: a.accessToken })).body.status, "online", "oneself is online");
					await socketCall(sockets[1], "user:unblock", { targetUserId: a.id });
					assert.equal(await statusOf(a, b.id), "online");
				} finally {
					for (const s of sockets) s.disconnect();
				}
			});
		});

		describe("roles", () => {
			it("GET /roles lists admin, moderator and user", async () => {
				const u = await registerUser(base, "rl");
				const res = await http(base, "GET", "/roles", { token: u.accessToken });
				assert.equal(res.status, 200);
				assert.deepEqual(res.body.map((r: any) => r.name).sort(), ["admin", "moderator", "user"]);
				assert.ok(res.body.every((r: any) => typeof r.id === "number"));
			});

			it("PUT /users/:id/roles is for admins; the new roles show in the next token", async () => {
				const u = await registerUser(base, "promo");
				assertEnvelope(await http(base, "PUT", `/users/${u.id}/roles`, { token: u.accessToken, body: { roles: ["admin"] } }), 403, "FORBIDDEN");
				assertEnvelope(await http(base, "PUT", `/users/${u.id}/roles`, { token: adminToken, body: { roles: ["king"] } }), 400, "VALIDATION_ERROR");
				assertEnvelope(await http(base, "PUT", `/users/${u.id}/roles`, { token: adminToken, body: { roles: [] } }), 400, "VALIDATION_ERROR");
				assertEnvelope(await http(base, "PUT", `/users/${u.id}/roles`, { token: adminToken, body: { roles: "admin" } }), 400, "VALIDATION_ERROR");
				const res = await http(base, "PUT", `/users/${u.id}/roles`, { token: adminToken, body: { roles: ["moderator", "user"] } });
				assert.equal(res.status, 200, res.text);
				assert.equal(res.body.role, "moderator");
				assert.deepEqual(res.body.roles, ["moderator", "user"]);
				const login = await http(base, "POST", "/auth/login", { body: { email: u.email, password: u.password } });
				assert.deepEqual((jwt.decode(login.body.accessToken) as jwt.JwtPayload).roles, ["moderator", "user"]);
				assertEnvelope(await http(base, "PUT", "/users/99999999/roles", { token: adminToken, body: { roles: ["user"] } }), 404, "NOT_FOUND");
			});

			it("keeps at least one admin", async () => {
				const me = await http(base, "GET", "/users/me", { token: adminToken });
				assertEnvelope(await http(base, "PUT", `/users/${me.body.id}/roles`, { token: adminToken, body: { roles: ["user"] } }), 409, "CONFLICT");
				assertEnvelope(await http(base, "DELETE", `/users/${me.body.id}`, { token: adminToken }), 409, "CONFLICT");
			});
		});

		describe("admin bootstrap", () => {
			it("an ADMIN_EMAIL of an account registered through the API: the users node refuses to start, the account stays a user", async () => {
				const store = await isolatedStore();
				try {
					const squatter = await withEnv(store.env, async () => {
						const s = await startBroker(["api", "users"]);
						try {
							return await registerUser(s.baseUrl, "squat");
						} finally {
							await s.stop();
						}
					});
					const node = await withEnv({ ...store.env, ADMIN_EMAIL: squatter.email.toUpperCase(), ADMIN_PASSWORD: "operator password 1", ADMIN_USERNAME: "operator" }, tryUsersNode);
					assert.ok(node.error, "the users service must not start");
					assert.match(node.error.message, /ADMIN_EMAIL/);
					assert.equal(node.fatal.length, 1, "one clear fatal line");
					assert.match(node.fatal[0], /ADMIN_EMAIL .* registered through the API/);
					const check = await withEnv(store.env, startUsersNode);
					assert.equal(check.error, null);
					try {
						assert.equal(await check.broker.call("users.isAdmin", { userId: squatter.id }), false, "not promoted");
						assert.equal(await check.broker.call("users.count"), 1, "no admin account made either");
					} finally {
						await check.broker.stop();
					}
				} finally {
					await store.drop();
				}
			});

			it("an ADMIN_PASSWORD that breaks the password rule: the users node refuses to start", async () => {
				const store = await isolatedStore();
				try {
					for (const password of ["short", "é".repeat(40)]) {
						const node = await withEnv({ ...store.env, ADMIN_EMAIL: "boot@example.test", ADMIN_PASSWORD: password }, tryUsersNode);
						assert.ok(node.error, `ADMIN_PASSWORD ${password}: must not start`);
						assert.match(node.error.message, /ADMIN_PASSWORD/);
					}
					const check = await withEnv(store.env, startUsersNode);
					assert.equal(check.error, null);
					try {
						assert.equal(await check.broker.call("users.count"), 0, "no account made");
					} finally {
						await check.broker.stop();
					}
				} finally {
					await store.drop();
				}
			});

			it("ADMIN_USERNAME taken by a registered account refuses; the bootstrap account and an admin of an older version start", async () => {
				const store = await isolatedStore();
				const boot = { ADMIN_EMAIL: "boot@example.test", ADMIN_PASSWORD: "boot password 1", ADMIN_USERNAME: "bootadmin" };
				try {
					const squatter = await withEnv(store.env, async () => {
						const s = await startBroker(["api", "users"]);
						try {
							return await registerUser(s.baseUrl, "nm");
						} finally {
							await s.stop();
						}
					});
					const taken = await withEnv({ ...store.env, ...boot, ADMIN_USERNAME: squatter.username }, tryUsersNode);
					assert.ok(taken.error, "must not start");
					assert.match(taken.error.message, /ADMIN_USERNAME/);
					// Two users nodes at once (PostgreSQL; the embedded store is one process's): one creates
					// the admin, the other finds it, both start.
					const nodes = await withEnv({ ...store.env, ...boot }, () => Promise.all(mode === "postgres" ? [tryUsersNode(), tryUsersNode()] : [tryUsersNode()]));
					assert.deepEqual(
						nodes.map(n => n.error?.message ?? null),
						nodes.map(() => null),
					);
					// Started again, the bootstrap account is left as it is; an account made admin is one too
					// (the bootstrap admin of an older version was registered like any other).
					await withEnv({ ...store.env, ...boot }, async () => {
						const s = await startBroker(["api", "users"]);
						try {
							const login = await http(s.baseUrl, "POST", "/auth/login", { body: { email: boot.ADMIN_EMAIL, password: boot.ADMIN_PASSWORD } });
							assert.equal(login.status, 200, login.text);
							assert.deepEqual(login.body.user.roles, ["admin", "user"]);
							assert.equal(await s.broker.call("users.count"), 2, "one admin account, made once");
							const promoted = await http(s.baseUrl, "PUT", `/users/${squatter.id}/roles`, { token: login.body.accessToken, body: { roles: ["admin", "user"] } });
							assert.equal(promoted.status, 200, promoted.text);
						} finally {
							await s.stop();
						}
					});
					const olderAdmin = await withEnv({ ...store.env, ADMIN_EMAIL: squatter.email, ADMIN_PASSWORD: "whatever password", ADMIN_USERNAME: "other" }, tryUsersNode);
					assert.equal(olderAdmin.error, null, "an account that is an admin already is fine");
				} finally {
					await store.drop();
				}
			});
		});

		describe("as an attacker", () => {
			it("a stolen access token cannot guess the password through change-password: counted like logins", async () => {
				const u = await registerUser(base, "steal");
				for (let i = 0; i < 5; i++) {
					assertEnvelope(await http(base, "POST", "/users/change-password", { token: u.accessToken, body: { oldPassword: `guess-${i}`, newPassword: "taken over 1" } }), 400, "INVALID_CREDENTIALS");
				}
				const blocked = await http(base, "POST", "/users/change-password", { token: u.accessToken, body: { oldPassword: u.password, newPassword: "taken over 1" } });
				assertEnvelope(blocked, 429, "RATE_LIMITED");
				assert.ok(Number(blocked.headers.get("retry-after")) >= 1);
				assertEnvelope(await http(base, "PATCH", `/users/${u.id}`, { token: u.accessToken, body: { email: `x.${u.email}`, currentPassword: u.password } }), 429, "RATE_LIMITED");
				assert.equal((await http(base, "GET", "/users/me", { token: u.accessToken })).body.email, u.email.toLowerCase());
			});

			it("two admins taking the admin role from each other at once leave one admin", { skip: mode === "embedded" && "the embedded store runs one transaction at a time: no race to lose" }, async () => {
				const store = await isolatedStore();
				const boot = { ADMIN_EMAIL: "race@example.test", ADMIN_PASSWORD: "race password 1", ADMIN_USERNAME: "raceadmin" };
				try {
					await withEnv({ ...store.env, ...boot }, async () => {
						const s = await startBroker(["api", "users"]);
						try {
							const other = await registerUser(s.baseUrl, "race");
							const bootId = (await http(s.baseUrl, "POST", "/auth/login", { body: { email: boot.ADMIN_EMAIL, password: boot.ADMIN_PASSWORD } })).body.user.id as number;
							const tokenOf = async (email: string, password: string) => (await http(s.baseUrl, "POST", "/auth/login", { body: { email, password } })).body.accessToken as string;
							for (let round = 0; round < 8; round++) {
								let admin = await tokenOf(boot.ADMIN_EMAIL, boot.ADMIN_PASSWORD);
								if (!(await s.broker.call("users.isAdmin", { userId: other.id }))) {
									assert.equal((await http(s.baseUrl, "PUT", `/users/${other.id}/roles`, { token: admin, body: { roles: ["admin", "user"] } })).status, 200);
								}
								if (!(await s.broker.call("users.isAdmin", { userId: bootId }))) {
									const otherToken = await tokenOf(other.email, other.password);
									assert.equal((await http(s.baseUrl, "PUT", `/users/${bootId}/roles`, { token: otherToken, body: { roles: ["admin", "user"] } })).status, 200);
									admin = await tokenOf(boot.ADMIN_EMAIL, boot.ADMIN_PASSWORD);
								}
								const otherToken = await tokenOf(other.email, other.password);
								const [x, y] = await Promise.all([
									http(s.baseUrl, "PUT", `/users/${other.id}/roles`, { token: admin, body: { roles: ["user"] } }),
									http(s.baseUrl, "PUT", `/users/${bootId}/roles`, { token: otherToken, body: { roles: ["user"] } }),
								]);
								const admins = [await s.broker.call("users.isAdmin", { userId: bootId }), await s.broker.call("users.isAdmin", { userId: other.id })].filter(Boolean).length;
								assert.equal(admins, 1, `round ${round}: ${x.status} ${y.status}, ${admins} admins left`);
								const statuses = [x.status, y.status].sort();
								assert.ok(statuses[0] === 200 && [403, 409].includes(statuses[1]), `round ${round}: one change wins, the other is refused: ${statuses}`);
							}
						} finally {
							await s.stop();
						}
					});
				} finally {
					await store.drop();
				}
			});
		});

		describe("bad input on every route", () => {
			it("answers malformed, mistyped and oversized input with a 4xx envelope, never 500", async () => {
				const u = await registerUser(base, "fuzz");
				const routes: [string, string][] = [
					["POST", "/auth/register"],
					["POST", "/auth/login"],
					["POST", "/auth/refresh"],
					["POST", "/auth/logout"],
					["GET", "/users/me"],
					["GET", "/users"],
					["GET", "/users/search"],
					["GET", `/users/${u.id}`],
					["POST", "/users/batch"],
					["PUT", `/users/${u.id}`],
					["PATCH", `/users/${u.id}`],
					["POST", "/users/change-password"],
					["GET", "/roles"],
					["PUT", `/users/${u.id}/roles`],
					["DELETE", "/users/not-a-number"],
				];
				const mistyped = { username: [], email: {}, password: 1, confirmPassword: false, refreshToken: [], ids: { a: 1 }, roles: [1, null], oldPassword: 3, newPassword: null, bio: 7, avatar_url: 9, currentPassword: 4, q: ["a"], limit: "x", page: -1, search: {} };
				const bodies: [string, { rawBody?: string; body?: unknown; headers?: Record<string, string> }][] = [
					["malformed JSON", { rawBody: "{not json", headers: { "content-type": "application/json" } }],
					["JSON null", { rawBody: "null", headers: { "content-type": "application/json" } }],
					["JSON array", { body: [{ id: 1 }] }],
					["mistyped fields", { body: mistyped }],
					["oversized", { body: { bio: "x".repeat(1024 * 1024 + 1) } }],
					["prototype pollution", { rawBody: '{"__proto__":{"admin":true},"constructor":{"prototype":{"x":1}}}', headers: { "content-type": "application/json" } }],
				];
				for (const [method, path] of routes) {
					for (const [label, input] of bodies) {
						if (method === "GET" && label !== "mistyped fields") continue;
						const query = method === "GET" && label === "mistyped fields" ? "?limit=x&page=-1&q=" : "";
						const res = await http(base, method, path + query, { token: u.accessToken, ...input, body: method === "GET" ? undefined : input.body });
						assert.ok(res.status < 500, `${method} ${path} ${label}: ${res.status} ${res.text.slice(0, 200)}`);
						if (res.status >= 400) {
							assert.equal(typeof res.body.code, "string", `${method} ${path} ${label}: envelope`);
							assert.equal(res.body.statusCode, res.status);
						}
					}
				}
				// The server is still fine afterwards, and nothing was changed by the bad calls (POST
				// /auth/logout with the bearer token ended that login: look with a new one).
				const relogin = await loginAs(u);
				assert.equal(relogin.status, 200, relogin.text);
				const me = await http(base, "GET", "/users/me", { token: relogin.body.accessToken });
				assert.equal(me.status, 200);
				assert.equal(me.body.username, u.username);
				assert.equal(me.body.bio, null);
				assert.equal(({} as Record<string, unknown>).admin, undefined);
			});
		});

		describe("authorization matrix", () => {
			const protectedRoutes: [string, string, unknown?][] = [
				["GET", "/users/me"],
				["GET", "/users"],
				["GET", "/users/search?q=a"],
				["GET", "/users/1"],
				["POST", "/users/batch", { ids: [1] }],
				["PATCH", "/users/1", { bio: "x" }],
				["DELETE", "/users/1"],
				["POST", "/users/change-password", { oldPassword: "a", newPassword: "bbbbbbbb" }],
				["GET", "/roles"],
				["PUT", "/users/1/roles", { roles: ["admin"] }],
			];

			it("refuses no token, expired, foreign-secret, alg none and malformed tokens with 401", async () => {
				const u = await registerUser(base, "mx");
				const now = Math.floor(Date.now() / 1000);
				const claims = { sub: String(u.id), username: u.username, roles: ["admin", "user"] };
				const expired = jwt.sign({ ...claims, iat: now - 3600, exp: now - 60 }, TEST_JWT_SECRET);
				const foreign = jwt.sign(claims, "another-secret-entirely-0123456789");
				const none = `${Buffer.from(JSON.stringify({ alg: "none", typ: "JWT" })).toString("base64url")}.${Buffer.from(JSON.stringify({ ...claims, iat: now, exp: now + 600 })).toString("base64url")}.`;
				const tampered = u.accessToken.slice(0, -4) + (u.accessToken.endsWith("AAAA") ? "BBBB" : "AAAA");
				const tokens: [string, Record<string, string>][] = [
					["none", {}],
					["expired", { authorization: `Bearer ${expired}` }],
					["foreign secret", { authorization: `Bearer ${foreign}` }],
					["alg none", { authorization: `Bearer ${none}` }],
					["tampered", { authorization: `Bearer ${tampered}` }],
					["garbage", { authorization: "Bearer not.a.jwt" }],
					["empty bearer", { authorization: "Bearer " }],
					["refresh token as access token", { authorization: `Bearer ${u.refreshToken}` }],
				];
				for (const [method, path, body] of protectedRoutes) {
					for (const [label, headers] of tokens) {
						const res = await http(base, method, path, { headers, body });
						assertEnvelope(res, 401, "UNAUTHORIZED");
						assert.ok(res.status === 401, `${method} ${path} with ${label}`);
					}
				}
			});

			it("accepts the raw JWT without the Bearer word too", async () => {
				const u = await registerUser(base, "raw");
				const res = await http(base, "GET", "/users/me", { headers: { authorization: u.accessToken } });
				assert.equal(res.status, 200);
			});

			it("a non-admin cannot touch another user's resources or admin routes", async () => {
				const a = await registerUser(base, "na");
				const b = await registerUser(base, "nb");
				assertEnvelope(await http(base, "PUT", `/users/${b.id}`, { token: a.accessToken, body: { bio: "x" } }), 403, "FORBIDDEN");
				assertEnvelope(await http(base, "DELETE", `/users/${b.id}`, { token: a.accessToken }), 403, "FORBIDDEN");
				assertEnvelope(await http(base, "PUT", `/users/${a.id}/roles`, { token: a.accessToken, body: { roles: ["admin"] } }), 403, "FORBIDDEN");
				// A token claiming admin, signed with the real secret but for a non-admin account,
				// still cannot change roles: the users service reads roles from its database.
				const forged = jwt.sign({ sub: String(a.id), username: a.username, roles: ["admin"] }, TEST_JWT_SECRET, { expiresIn: 60 });
				assertEnvelope(await http(base, "PUT", `/users/${a.id}/roles`, { token: forged, body: { roles: ["admin"] } }), 403, "FORBIDDEN");
			});
		});
	});
}


