/**
 * Every route of CONTRACT.md "Auth and users" over real HTTP against the real gateway,
 * run once on the embedded store and once on PostgreSQL (see the *.test.ts files).
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import jwt from "jsonwebtoken";
import { createTestDatabase, http, newIdentity, registerUser, startBroker, tempDir, type RunningSystem } from "../helpers/system";

export const TEST_JWT_SECRET = "integration-test-secret-0123456789";
const ADMIN = { email: "root@example.test", password: "admin password 1", username: "rootadmin" };

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
			process.env.JWT_SECRET = TEST_JWT_SECRET;
			process.env.BCRYPT_ROUNDS = "4";
			process.env.RATE_LIMIT = "0";
			process.env.RATE_LIMIT_AUTH = "0";
			process.env.ADMIN_EMAIL = ADMIN.email;
			process.env.ADMIN_PASSWORD = ADMIN.password;
			process.env.ADMIN_USERNAME = ADMIN.username;
			process.env.DATA_DIR = tempDir();
			if (mode === "postgres") {
				const db = await createTestDatabase();
				process.env.DATABASE_URL = db.url;
				dropDb = db.drop;
			} else {
				delete process.env.DATABASE_URL;
			}
			sys = await startBroker(["api", "users"]);
			base = sys.baseUrl;
			const login = await http(base, "POST", "/auth/login", { body: { email: ADMIN.email, password: ADMIN.password } });
			assert.equal(login.status, 200, login.text);
			adminToken = login.body.accessToken;
		});

		after(async () => {
			await sys?.stop();
			await dropDb?.();
		});

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

			it("GET /users/search matches prefixes of username and email", async () => {
				const tag = `sr${Date.now().toString(36)}`;
				const a = await http(base, "POST", "/auth/register", { body: { username: `${tag}alpha`, email: `zz${tag}@example.test`, password: "password 123" } });
				const b = await http(base, "POST", "/auth/register", { body: { username: `other${tag}`, email: `${tag}mail@example.test`, password: "password 123" } });
				const token = a.body.accessToken;
				const res = await http(base, "GET", `/users/search?q=${tag.toUpperCase()}`, { token });
				assert.equal(res.status, 200, res.text);
				const ids = res.body.map((u: any) => u.id).sort();
				assert.deepEqual(ids, [a.body.user.id, b.body.user.id].sort(), "username prefix and email prefix both match");
				const none = await http(base, "GET", `/users/search?q=${tag.slice(2)}`, { token });
				assert.ok(!none.body.some((u: any) => u.id === a.body.user.id), "not a substring match");
				const limited = await http(base, "GET", `/users/search?q=${tag}&limit=1`, { token });
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
				const put = await http(base, "PUT", `/users/${a.id}`, { token: a.accessToken, body: { bio: "hello", avatar_url: "https://example.test/a.png" } });
				assert.equal(put.status, 200, put.text);
				assert.equal(put.body.bio, "hello");
				assert.equal(put.body.avatar_url, "https://example.test/a.png");
				const newName = `${a.username.slice(0, 28)}_new`;
				const patch = await http(base, "PATCH", `/users/${a.id}`, { token: a.accessToken, body: { username: newName } });
				assert.equal(patch.status, 200, patch.text);
				assert.equal(patch.body.username, newName);
				assert.equal(patch.body.bio, "hello", "PATCH keeps other fields");
				assertEnvelope(await http(base, "PATCH", `/users/${b.id}`, { token: a.accessToken, body: { bio: "hacked" } }), 403, "FORBIDDEN");
				assertEnvelope(await http(base, "PATCH", `/users/${a.id}`, { token: a.accessToken, body: { username: b.username } }), 409, "CONFLICT");
				assertEnvelope(await http(base, "PATCH", `/users/${a.id}`, { token: a.accessToken, body: { email: b.email } }), 409, "CONFLICT");
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
				const mistyped = { username: [], email: {}, password: 1, confirmPassword: false, refreshToken: [], ids: { a: 1 }, roles: [1, null], oldPassword: 3, newPassword: null, bio: 7, avatar_url: 9, q: ["a"], limit: "x", page: -1, search: {} };
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
				// The server is still fine afterwards, and nothing was changed by the bad calls.
				const me = await http(base, "GET", "/users/me", { token: u.accessToken });
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


