/**
 * The gateway's defences over real HTTP and real sockets, embedded mode: only the client
 * namespaces exist, a socket lives no longer than its login, anonymous bodies are never read,
 * limits count per user, CORS matches exactly, the client address is taken from the right hop,
 * and pages carry their hardening headers.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import { after, before, describe, it } from "node:test";
import { io, type Socket } from "socket.io-client";
import { freePort, type NodeProcess, startNode } from "../helpers/processes";
import { call, connectSocket, emitAck, sleep, type TestSocket } from "../helpers/sockets";
import { http as request, registerUser, startBroker, tempDir, type RunningSystem, waitFor } from "../helpers/system";

const SECRET = "security-test-secret-0123456789abcdef";
const ADMIN = { email: "secadmin@example.test", password: "admin password 1", username: "secadmin" };
const MiB = 1024 * 1024;

function baseEnv(extra: Record<string, string> = {}) {
	process.env.JWT_SECRET = SECRET;
	process.env.BCRYPT_ROUNDS = "4";
	process.env.DATA_DIR = tempDir();
	process.env.RATE_LIMIT = "0";
	process.env.RATE_LIMIT_AUTH = "0";
	process.env.ADMIN_EMAIL = ADMIN.email;
	process.env.ADMIN_PASSWORD = ADMIN.password;
	process.env.ADMIN_USERNAME = ADMIN.username;
	for (const k of ["DATABASE_URL", "MONGO_URL", "TRANSPORTER", "TRUST_PROXY", "ACCESS_TOKEN_TTL", "LARGE_BODIES_IN_FLIGHT", "CORS_ORIGINS"]) delete process.env[k];
	Object.assign(process.env, extra);
}

/** A socket that remembers why it ended: the session:ended reason and the disconnect reason. */
interface WatchedSocket extends TestSocket {
	ended: Promise<{ reason: string | null; disconnect: string }>;
}

async function watched(base: string, token: string, nsp = "/chat"): Promise<WatchedSocket> {
	const socket = (await connectSocket(base, token, nsp)) as WatchedSocket;
	let reason: string | null = null;
	socket.on("session:ended", (p: { reason: string }) => (reason = p.reason));
	socket.ended = new Promise(resolve => socket.once("disconnect", d => resolve({ reason, disconnect: d })));
	return socket;
}

/** Resolves with how it ended, or rejects if the socket is still up after `ms`. */
async function endsWithin(socket: WatchedSocket, ms: number) {
	const timeout = sleep(ms).then(() => {
		throw new Error(`socket still connected after ${ms} ms`);
	});
	return Promise.race([socket.ended, timeout]);
}

/** Connect to a namespace and report the connect_error message (or "connected"). */
function tryNamespace(base: string, nsp: string, token?: string): Promise<string> {
	return new Promise(resolve => {
		const socket: Socket = io(base + nsp, { auth: token ? { token } : {}, transports: ["websocket"], reconnection: false, forceNew: true });
		const done = (outcome: string) => {
			socket.close();
			resolve(outcome);
		};
		socket.once("connect", () => done("connected"));
		socket.once("connect_error", err => done(err.message));
		setTimeout(() => done("timeout"), 5000);
	});
}

/**
 * Start a POST with a large declared body, send only `firstBytes` of it, and report what the
 * server answered before the rest was sent (or "no answer").
 */
function partialPost(port: number, path: string, headers: Record<string, string>, declared: number, firstBytes: number, waitMs = 3000) {
	return new Promise<{ status: number | "no answer"; req: http.ClientRequest }>(resolve => {
		const req = http.request({ host: "127.0.0.1", port, path, method: "POST", headers: { "content-type": "application/json", "content-length": String(declared), ...headers } });
		const timer = setTimeout(() => resolve({ status: "no answer", req }), waitMs);
		req.on("response", res => {
			clearTimeout(timer);
			res.resume();
			resolve({ status: res.statusCode ?? 0, req });
		});
		req.on("error", () => undefined);
		req.write(Buffer.alloc(firstBytes, 0x20));
	});
}

describe("security: namespaces, sessions, bodies, limits, headers (embedded)", () => {
	let sys: RunningSystem;
	let base: string;
	let adminToken: string;
	const open: Socket[] = [];

	before(async () => {
		baseEnv();
		sys = await startBroker(["api", "users", "conversations", "messages", "notifications", "files"]);
		base = sys.baseUrl;
		const login = await request(base, "POST", "/auth/login", { body: { email: ADMIN.email, password: ADMIN.password } });
		assert.equal(login.status, 200, login.text);
		adminToken = login.body.accessToken;
	});
	after(async () => {
		for (const s of open) s.close();
		await sys?.stop();
	});

	const sock = async (token: string, nsp = "/chat") => {
		const s = await watched(base, token, nsp);
		open.push(s);
		return s;
	};

	describe("only /chat and /notifications exist", () => {
		it("refuses the default namespace and any unknown one, with or without a token", async () => {
			const u = await registerUser(base, "nsp");
			for (const nsp of ["/", "/admin", "/chat2"]) {
				assert.equal(await tryNamespace(base, nsp), "Invalid namespace", nsp);
				assert.equal(await tryNamespace(base, nsp, u.accessToken), "Invalid namespace", `${nsp} with a token`);
			}
			assert.equal(await tryNamespace(base, "/chat", u.accessToken), "connected");
		});

		it("answers an event the namespace does not have with NOT_FOUND, and reaches no action", async () => {
			const u = await registerUser(base, "evt");
			const s = await sock(u.accessToken);
			const seen: string[] = [];
			// moleculer-io's `call` event, the way the review used it.
			for (const [event, args] of [
				["call", ["api.broadcast", { event: "message:created", args: [{ forged: true }] }]],
				["call", ["$node.options", {}]],
				["call", ["users.login", { email: ADMIN.email, password: "x" }]],
				["api.getClients", [{ room: "user:1" }]],
			] as const) {
				const ack = await new Promise<{ ok: boolean; error?: { code: string } } | null>(resolve => {
					setTimeout(() => resolve(null), 3000);
					s.emit(event, ...args, resolve);
				});
				seen.push(`${event}:${ack?.ok}:${ack?.error?.code}`);
			}
			assert.deepEqual(seen, ["call:false:NOT_FOUND", "call:false:NOT_FOUND", "call:false:NOT_FOUND", "api.getClients:false:NOT_FOUND"]);
			assert.ok(s.connected);
			assert.equal((await call(s, "conversation:list", {})).length, 0);
		});
	});

	describe("a socket lives no longer than its login", () => {
		it("logout ends every socket of the user at once, and the token is refused afterwards", async () => {
			const u = await registerUser(base, "out");
			const other = await request(base, "POST", "/auth/login", { body: { email: u.email, password: u.password } });
			const [chat, notif, otherLogin] = [await sock(u.accessToken), await sock(u.accessToken, "/notifications"), await sock(other.body.accessToken)];
			const started = Date.now();
			const res = await request(base, "POST", "/auth/logout", { body: { refreshToken: u.refreshToken } });
			assert.equal(res.status, 204);
			for (const s of [chat, notif, otherLogin]) {
				const how = await endsWithin(s, 2000);
				assert.equal(how.reason, "logout");
				assert.equal(how.disconnect, "io server disconnect");
			}
			assert.ok(Date.now() - started < 2000);
			assert.equal((await request(base, "GET", "/users/me", { token: u.accessToken })).status, 401);
			await assert.rejects(connectSocket(base, u.accessToken), /Unauthorized/);
			// The other login was not logged out: its token still works.
			assert.equal((await request(base, "GET", "/users/me", { token: other.body.accessToken })).status, 200);
		});

		it("logout with only the access token ends that login too", async () => {
			const u = await registerUser(base, "outbearer");
			const s = await sock(u.accessToken);
			const res = await request(base, "POST", "/auth/logout", { token: u.accessToken });
			assert.equal(res.status, 204);
			assert.equal((await endsWithin(s, 2000)).reason, "logout");
			assert.equal((await request(base, "GET", "/users/me", { token: u.accessToken })).status, 401);
		});

		it("a password change ends every socket and every token of the account", async () => {
			const u = await registerUser(base, "pw");
			const other = await request(base, "POST", "/auth/login", { body: { email: u.email, password: u.password } });
			const [s1, s2] = [await sock(u.accessToken), await sock(other.body.accessToken, "/notifications")];
			const res = await request(base, "POST", "/users/change-password", { token: u.accessToken, body: { oldPassword: u.password, newPassword: "a brand new password" } });
			assert.equal(res.status, 204);
			for (const s of [s1, s2]) assert.equal((await endsWithin(s, 2000)).reason, "password_changed");
			for (const token of [u.accessToken, other.body.accessToken]) assert.equal((await request(base, "GET", "/users/me", { token })).status, 401);
			const again = await request(base, "POST", "/auth/login", { body: { email: u.email, password: "a brand new password" } });
			assert.equal(again.status, 200);
			assert.equal((await request(base, "GET", "/users/me", { token: again.body.accessToken })).status, 200);
		});

		it("deleting the account ends its sockets; its token sends nothing anywhere", async () => {
			const u = await registerUser(base, "del");
			const peer = await registerUser(base, "delpeer");
			const [su, sp] = [await sock(u.accessToken), await sock(peer.accessToken)];
			const conv = await call(su, "conversation:create", { type: "private", participants: [peer.id] });
			await call(su, "message:send", { conversationId: conv.id, content: "before" });
			assert.equal((await request(base, "DELETE", `/users/${u.id}`, { token: u.accessToken })).status, 204);
			assert.equal((await endsWithin(su, 2000)).reason, "account_deleted");
			const send = await request(base, "POST", `/conversations/${conv.id}/messages`, { token: u.accessToken, body: { content: "from beyond" } });
			assert.equal(send.status, 401);
			await assert.rejects(connectSocket(base, u.accessToken), /Unauthorized/);
			await sleep(200);
			assert.ok(!sp.received.some(r => r.event === "message:created" && r.payload.content === "from beyond"));
		});

		it("a role change ends the user's sockets; a refreshed token carries the new roles", async () => {
			const u = await registerUser(base, "role");
			const s = await sock(u.accessToken);
			const res = await request(base, "PUT", `/users/${u.id}/roles`, { token: adminToken, body: { roles: ["moderator", "user"] } });
			assert.equal(res.status, 200, res.text);
			assert.equal((await endsWithin(s, 2000)).reason, "roles_changed");
			assert.equal((await request(base, "GET", "/users/me", { token: u.accessToken })).status, 401);
			const refreshed = await request(base, "POST", "/auth/refresh", { body: { refreshToken: u.refreshToken } });
			assert.equal(refreshed.status, 200, refreshed.text);
			const me = await request(base, "GET", "/users/me", { token: refreshed.body.accessToken });
			assert.deepEqual(me.body.roles.sort(), ["moderator", "user"]);
		});

		it("auth:refresh checks the token it is given", async () => {
			const u = await registerUser(base, "ref");
			const v = await registerUser(base, "refother");
			const s = await sock(u.accessToken);
			const fresh = await request(base, "POST", "/auth/refresh", { body: { refreshToken: u.refreshToken } });
			const ok = await emitAck(s, "auth:refresh", { token: fresh.body.accessToken });
			assert.equal(ok.ok, true, JSON.stringify(ok));
			assert.ok(Date.parse(ok.data.expiresAt) > Date.now());
			assert.equal((await emitAck(s, "auth:refresh", { token: v.accessToken })).error?.code, "FORBIDDEN");
			assert.equal((await emitAck(s, "auth:refresh", { token: "garbage" })).error?.code, "UNAUTHORIZED");
			assert.equal((await emitAck(s, "auth:refresh", {})).error?.code, "VALIDATION_ERROR");
			assert.equal((await emitAck(s, "auth:refresh", "a string")).error?.code, "VALIDATION_ERROR");
			assert.ok(s.connected, "bad refreshes leave the socket as it was");
		});
	});

	describe("bodies are read only for a valid token, a few at a time", () => {
		for (const path of ["/upload/file-base64", "/users/upload-avatar", "/users/batch"]) {
			it(`answers an anonymous 30 MiB body to ${path} with 401 before reading it`, async () => {
				const { status, req } = await partialPost(sys.port, path, {}, 30 * MiB, 64 * 1024);
				req.destroy();
				assert.equal(status, 401);
				const bad = await partialPost(sys.port, path, { authorization: "Bearer not-a-token" }, 30 * MiB, 64 * 1024);
				bad.req.destroy();
				assert.equal(bad.status, 401);
			});
		}

		it("answers a flood of anonymous bodies to /auth beyond the address limit before reading them", async () => {
			// The /auth routes are open; their per-address limit comes first. Tested with a limit in its own broker below.
			const { status, req } = await partialPost(sys.port, "/auth/login", {}, 2 * MiB, 1024);
			req.destroy();
			assert.equal(status, 413, "over the 1 MiB limit is refused from the header alone");
		});
	});

	describe("CORS compares origins exactly", () => {
		it("grants nothing to a prefix of an allowed origin", async () => {
			for (const origin of ["http://localhost:300", "http://localhost", "http://localhost:517", "http://l"]) {
				const res = await request(base, "GET", "/health", { headers: { origin } });
				assert.equal(res.headers.get("access-control-allow-origin"), null, origin);
				assert.equal(res.status, 403, origin);
				const preflight = await fetch(`${base}/users/me`, { method: "OPTIONS", headers: { origin, "access-control-request-method": "GET" } });
				assert.equal(preflight.headers.get("access-control-allow-origin"), null, `preflight ${origin}`);
			}
			const allowed = await request(base, "GET", "/health", { headers: { origin: "http://localhost:5173" } });
			assert.equal(allowed.headers.get("access-control-allow-origin"), "http://localhost:5173");
		});
	});

	describe("payloads cannot smuggle fields", () => {
		it("a __proto__ key in a JSON body is dropped, not made the prototype of the params", async () => {
			const [a, b] = [await registerUser(base, "proto"), await registerUser(base, "proto2")];
			const res = await request(base, "POST", "/conversations", { token: a.accessToken, rawBody: `{"__proto__":{"type":"group","name":"smuggled"},"participants":[${b.id}]}`, headers: { "content-type": "application/json" } });
			assert.equal(res.status, 201, res.text);
			assert.equal(res.body.type, "private");
			assert.equal(res.body.name, null);
		});

		it("lets a browser on another allowed origin send X-Refresh-Transport", async () => {
			const res = await fetch(`${base}/auth/refresh`, { method: "OPTIONS", headers: { origin: "http://localhost:5173", "access-control-request-method": "POST", "access-control-request-headers": "x-refresh-transport,content-type" } });
			assert.equal(res.status, 204);
			assert.match((res.headers.get("access-control-allow-headers") ?? "").toLowerCase(), /x-refresh-transport/);
		});
	});

	describe("what an outsider or a searcher learns", () => {
		it("an outsider gets the same answer for a real message id as for a made-up one", async () => {
			const [a, b, outsider] = [await registerUser(base, "orc"), await registerUser(base, "orc2"), await registerUser(base, "orc3")];
			const sa = await sock(a.accessToken);
			const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
			const msg = await call(sa, "message:send", { conversationId: conv.id, content: "secret" });
			const so = await sock(outsider.accessToken);
			const real = await emitAck(so, "message:read", { messageId: msg.id });
			const fake = await emitAck(so, "message:read", { messageId: "0".repeat(msg.id.length) });
			assert.deepEqual(real, fake);
			assert.equal(real.error?.code, "NOT_FOUND");
		});

		it("search covers all of the caller's chats, and still hides history it cleared", async () => {
			const [a, b, c] = [await registerUser(base, "srch"), await registerUser(base, "srch2"), await registerUser(base, "srch3")];
			const sa = await sock(a.accessToken);
			const one = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
			const two = await call(sa, "conversation:create", { type: "group", participants: [b.id, c.id], name: "g" });
			await call(sa, "message:send", { conversationId: one.id, content: "needle old" });
			await call(sa, "message:send", { conversationId: two.id, content: "needle in group" });
			assert.equal((await request(base, "DELETE", `/conversations/${one.id}/messages`, { token: a.accessToken })).status, 204);
			await call(sa, "message:send", { conversationId: one.id, content: "needle new" });
			const found = await call(sa, "message:search", { query: "NEEDLE" });
			assert.deepEqual(found.messages.map((m: { content: string }) => m.content).sort(), ["needle in group", "needle new"]);
			assert.equal(found.total, 2);
			const sb = await sock(b.accessToken);
			assert.equal((await call(sb, "message:search", { query: "needle" })).total, 3, "b cleared nothing");
		});
	});

	describe("socket limits count per user", () => {
		it("holds at most 20 sockets per user per namespace: the oldest is ended", async () => {
			const u = await registerUser(base, "many");
			const chats: WatchedSocket[] = [];
			for (let i = 0; i < 20; i++) chats.push(await sock(u.accessToken));
			const notif = await sock(u.accessToken, "/notifications");
			const newest = await sock(u.accessToken);
			assert.equal((await endsWithin(chats[0], 2000)).reason, "too_many_sockets");
			await sleep(200);
			assert.ok(chats.slice(1).every(s => s.connected), "only the oldest went");
			assert.ok(newest.connected && notif.connected);
			for (const s of chats) s.close();
		});
	});

	describe("page hardening and the refresh token transport", () => {
		it("sends CSP with frame-ancestors 'none', nosniff and Referrer-Policy on pages, code and docs", async () => {
			for (const path of ["/", "/index.html", "/app.js", "/style.css", "/docs", "/docs/init.js", "/docs/ui/swagger-ui.css"]) {
				const res = await fetch(base + path);
				assert.equal(res.status, 200, path);
				const csp = res.headers.get("content-security-policy") ?? "";
				assert.match(csp, /frame-ancestors 'none'/, path);
				assert.match(csp, /default-src 'self'/, path);
				assert.doesNotMatch(csp, /script-src[^;]*unsafe/, path);
				assert.equal(res.headers.get("x-content-type-options"), "nosniff", path);
				assert.ok(res.headers.get("referrer-policy"), path);
			}
			assert.doesNotMatch(await (await fetch(`${base}/docs`)).text(), /<script>/, "no inline script on /docs");
		});

		it("has the page and its code revalidated on every load", async () => {
			for (const path of ["/", "/app.js"]) {
				const res = await fetch(base + path);
				assert.match(res.headers.get("cache-control") ?? "", /no-cache/, path);
			}
		});

		it("keeps the refresh token out of the body for a client that asks for the cookie only", async () => {
			const id = { username: `cookie${Date.now() % 1e6}`, email: `cookie${Date.now() % 1e6}@example.test`, password: "correct horse battery" };
			const cookieOnly = { "x-refresh-transport": "cookie" };
			const reg = await request(base, "POST", "/auth/register", { body: id, headers: cookieOnly });
			assert.equal(reg.status, 201);
			assert.ok(reg.body.accessToken && !("refreshToken" in reg.body));
			const cookie = (reg.headers.get("set-cookie") ?? "").split(";")[0];
			assert.match(cookie, /^refreshToken=.+/);
			const login = await request(base, "POST", "/auth/login", { body: { email: id.email, password: id.password }, headers: cookieOnly });
			assert.ok(login.body.accessToken && !("refreshToken" in login.body));
			const refreshed = await request(base, "POST", "/auth/refresh", { headers: { ...cookieOnly, cookie } });
			assert.equal(refreshed.status, 200);
			assert.ok(refreshed.body.accessToken && !("refreshToken" in refreshed.body));
			assert.match(refreshed.headers.get("set-cookie") ?? "", /refreshToken=.+;.*HttpOnly/);
			// Clients of v1 still get it in the body.
			const v1 = await request(base, "POST", "/auth/login", { body: { email: id.email, password: id.password } });
			assert.equal(typeof v1.body.refreshToken, "string");
		});
	});
});

describe("security: token expiry and auth:refresh (embedded, 3 s tokens)", () => {
	let sys: RunningSystem;
	let base: string;
	before(async () => {
		baseEnv({ ACCESS_TOKEN_TTL: "3" });
		sys = await startBroker(["api", "users"]);
		base = sys.baseUrl;
	});
	after(async () => {
		delete process.env.ACCESS_TOKEN_TTL;
		await sys?.stop();
	});

	it("ends a socket when its token expires", async () => {
		const u = await registerUser(base, "exp");
		const s = await watched(base, u.accessToken);
		const how = await endsWithin(s, 5000);
		assert.equal(how.reason, "expired");
		assert.equal(how.disconnect, "io server disconnect");
	});

	it("keeps a socket that sends auth:refresh with a newer token alive past the first one's expiry", async () => {
		const u = await registerUser(base, "keep");
		const s = await watched(base, u.accessToken);
		let refreshToken = u.refreshToken;
		for (let round = 0; round < 3; round++) {
			await sleep(1500);
			const next = await request(base, "POST", "/auth/refresh", { body: { refreshToken } });
			assert.equal(next.status, 200);
			refreshToken = next.body.refreshToken;
			assert.equal((await emitAck(s, "auth:refresh", { token: next.body.accessToken })).ok, true);
		}
		// 4.5 s after connecting with a 3 s token, the socket is still there and works.
		assert.ok(s.connected);
		assert.equal((await emitAck(s, "conversation:list", {})).error?.code, "SERVICE_UNAVAILABLE", "reaches the action (no chat service here)");
		s.close();
	});

	it("refuses an older token than the socket already has", async () => {
		const u = await registerUser(base, "older");
		await sleep(1100);
		const newer = await request(base, "POST", "/auth/refresh", { body: { refreshToken: u.refreshToken } });
		const s = await watched(base, newer.body.accessToken);
		assert.equal((await emitAck(s, "auth:refresh", { token: u.accessToken })).error?.code, "BAD_REQUEST");
		s.close();
	});
});

describe("security: large bodies in flight are capped per node and per user", () => {
	let sys: RunningSystem;
	before(async () => {
		baseEnv({ LARGE_BODIES_IN_FLIGHT: "2" });
		sys = await startBroker(["api", "users", "files"]);
	});
	after(async () => {
		delete process.env.LARGE_BODIES_IN_FLIGHT;
		await sys?.stop();
	});

	it("a user sends two at once; the node reads two at once; the rest are told to retry", async () => {
		const [a, b] = [await registerUser(sys.baseUrl, "big"), await registerUser(sys.baseUrl, "big2")];
		const auth = (t: string) => ({ authorization: `Bearer ${t}` });
		const held = [
			await partialPost(sys.port, "/upload/file-base64", auth(a.accessToken), 20 * MiB, 64 * 1024, 500),
			await partialPost(sys.port, "/upload/file-base64", auth(a.accessToken), 20 * MiB, 64 * 1024, 500),
		];
		assert.deepEqual(held.map(h => h.status), ["no answer", "no answer"], "both are being read");
		const third = await partialPost(sys.port, "/upload/file-base64", auth(a.accessToken), 20 * MiB, 1024);
		third.req.destroy();
		assert.equal(third.status, 429, "a third from the same user");
		const other = await partialPost(sys.port, "/users/upload-avatar", auth(b.accessToken), 20 * MiB, 1024);
		other.req.destroy();
		assert.equal(other.status, 503, "the node is full");
		for (const h of held) h.req.destroy();
		// The slots come back when those requests end.
		await waitFor(async () => {
			const res = await request(sys.baseUrl, "POST", "/upload/file-base64", { token: b.accessToken, body: { fileName: "a.txt", base64: Buffer.from("hello").toString("base64") } });
			return res.status === 201;
		}, 5000);
	});
});

describe("security: the client address behind proxies", () => {
	let sys: RunningSystem;
	after(async () => {
		delete process.env.TRUST_PROXY;
		await sys?.stop();
	});

	it("with TRUST_PROXY=true limits by the hop the proxy added, not the client's leftmost entry", async () => {
		baseEnv({ TRUST_PROXY: "true", RATE_LIMIT_AUTH: "2" });
		sys = await startBroker(["api", "users"]);
		const statuses: number[] = [];
		for (let i = 0; i < 8; i++) {
			// The client forges a new leftmost address each time; the proxy appends the real one.
			const res = await request(sys.baseUrl, "POST", "/auth/login", { headers: { "x-forwarded-for": `10.9.${i}.1, 203.0.113.7` }, body: { email: "nobody@example.test", password: "x" } });
			statuses.push(res.status);
		}
		assert.ok(statuses.includes(429), `one client behind the proxy is limited: ${statuses.join(",")}`);
		// Another real client (a different hop added by the proxy) is not.
		const other = await request(sys.baseUrl, "POST", "/auth/login", { headers: { "x-forwarded-for": "203.0.113.8" }, body: { email: "nobody@example.test", password: "x" } });
		assert.equal(other.status, 400);
	});
});

describe("security: an anonymous flood of large bodies does not raise the gateway's memory", () => {
	let node: NodeProcess | null = null;
	after(async () => {
		await node?.stop("SIGKILL");
	});

	/** Resident memory of a process, in MiB, from /proc. */
	const rssMiB = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) / 1024;

	/**
	 * POST `size` bytes of (valid-looking) JSON without a token. Resolves with the status, or with
	 * "hung up" when the server closed the connection before the client could send it all.
	 */
	const anonymousUpload = (port: number, path: string, size: number) =>
		new Promise<number | "hung up">(resolve => {
			const req = http.request({ host: "127.0.0.1", port, path, method: "POST", headers: { "content-type": "application/json", "content-length": String(size) } });
			const chunk = Buffer.alloc(MiB, 0x61);
			let sent = 0;
			let answer: number | "hung up" = "hung up";
			req.on("response", res => {
				answer = res.statusCode ?? 0;
				res.resume();
			});
			req.on("error", () => resolve(answer));
			req.on("close", () => resolve(answer === "hung up" && sent >= size ? 0 : answer));
			const pump = () => {
				while (sent < size) {
					sent += chunk.length;
					if (!req.write(chunk)) return void req.once("drain", pump);
				}
				req.end();
			};
			req.write('{"fileName":"a.png","base64":"');
			pump();
		});

	it("20 parallel anonymous 30 MiB bodies: all 401, memory stays flat", { skip: process.platform !== "linux" && "reads /proc" }, async () => {
		const port = await freePort();
		const dir = tempDir();
		node = startNode({ SERVICES: "api", PORT: String(port), DATA_DIR: dir, JWT_SECRET: SECRET }, dir, "api");
		await waitFor(async () => (await request(`http://127.0.0.1:${port}`, "GET", "/health")).status === 200, 60_000, 250);
		const pid = node.child.pid as number;
		await sleep(500);
		const before = rssMiB(pid);
		let peak = before;
		const sampler = setInterval(() => (peak = Math.max(peak, rssMiB(pid))), 50);
		const statuses = await Promise.all(Array.from({ length: 20 }, (_, i) => anonymousUpload(port, i % 2 ? "/upload/file-base64" : "/users/upload-avatar", 30 * MiB)));
		clearInterval(sampler);
		assert.ok(peak - before < 64, `RSS grew by ${Math.round(peak - before)} MiB (from ${Math.round(before)} MiB)`);
		// Each is refused: answered 401, or hung up on before the client could send the whole body.
		assert.ok(statuses.every(st => st === 401 || st === "hung up"), statuses.join(","));
		assert.ok(statuses.includes(401));
	});
});

describe("security: socket event limits count per user, across its sockets", () => {
	let sys: RunningSystem;
	before(async () => {
		baseEnv({ RATE_LIMIT: "3" });
		sys = await startBroker(["api", "users"]);
	});
	after(async () => {
		delete process.env.RATE_LIMIT;
		await sys?.stop();
	});

	it("three sockets of one user share one budget; another user has its own", async () => {
		const u = await registerUser(sys.baseUrl, "budget");
		const v = await registerUser(sys.baseUrl, "budget2");
		const sockets = [await connectSocket(sys.baseUrl, u.accessToken), await connectSocket(sys.baseUrl, u.accessToken), await connectSocket(sys.baseUrl, u.accessToken)];
		const codes: string[] = [];
		// A burst of 3 × 4 events: one socket's worth would pass, the user's three together must not.
		for (let i = 0; i < 4; i++) {
			// conversation:list reaches no service here (SERVICE_UNAVAILABLE) unless the limit stops it first.
			for (const s of sockets) codes.push((await emitAck(s, "conversation:list", {})).error?.code ?? "ok");
		}
		const limited = codes.filter(c => c === "RATE_LIMITED").length;
		assert.ok(limited >= 4, `only ${limited} of 12 were limited: ${codes.join(",")}`);
		const other = await connectSocket(sys.baseUrl, v.accessToken);
		assert.equal((await emitAck(other, "conversation:list", {})).error?.code, "SERVICE_UNAVAILABLE", "another user is not limited");
		for (const s of [...sockets, other]) s.close();
	});
});

describe("security: a flood of password checks is bounded per node", () => {
	let sys: RunningSystem;
	before(async () => {
		baseEnv({ BCRYPT_ROUNDS: "10" });
		sys = await startBroker(["api", "users"]);
	});
	after(async () => {
		process.env.BCRYPT_ROUNDS = "4";
		await sys?.stop();
	});

	it("80 logins at once: a few are checked, the rest are told to come back (503 with Retry-After), the node stays responsive", async () => {
		const results = await Promise.all(
			Array.from({ length: 80 }, (_, i) => request(sys.baseUrl, "POST", "/auth/login", { body: { email: `nobody${i}@example.test`, password: "wrong password" } })),
		);
		const statuses = results.map(r => r.status);
		const busy = results.filter(r => r.status === 503);
		assert.ok(busy.length > 0, `none refused: ${statuses.join(",")}`);
		assert.ok(busy.every(r => r.headers.get("retry-after") === "1" && r.body.code === "SERVICE_UNAVAILABLE"));
		assert.ok(statuses.every(s => s === 400 || s === 503), statuses.join(","));
		assert.equal((await request(sys.baseUrl, "GET", "/health")).status, 200);
	});
});
