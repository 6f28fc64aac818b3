/**
 * The gateway's own policies over real HTTP and real sockets: trace ids, the error envelope,
 * CORS, rate limits, 503 when a service is not running, the API docs, socket authentication.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import { after, before, describe, it } from "node:test";
import jwt from "jsonwebtoken";
import type { ActionHandler, ActionSchema, Context, Middleware } from "moleculer";
import { io as connectSocket, type Socket } from "socket.io-client";
import { API_SNAPSHOTS } from "../../lib/api-documents";
import type { CallMeta } from "../../lib/meta";
import { http, registerUser, startBroker, tempDir, type RunningSystem, waitFor } from "../helpers/system";

const SECRET = "gateway-test-secret-0123456789abcdef";
const ORIGIN = "http://localhost:5173";

function baseEnv() {
	process.env.JWT_SECRET = SECRET;
	process.env.BCRYPT_ROUNDS = "4";
	process.env.DATA_DIR = tempDir();
	delete process.env.DATABASE_URL;
	delete process.env.RATE_LIMIT;
	delete process.env.RATE_LIMIT_AUTH;
	delete process.env.ADMIN_EMAIL;
}

function connect(baseUrl: string, nsp: string, opts: Record<string, unknown>): Promise<Socket> {
	return new Promise((resolve, reject) => {
		const socket = connectSocket(baseUrl + nsp, { transports: ["websocket"], reconnection: false, forceNew: true, ...opts });
		socket.once("connect", () => resolve(socket));
		socket.once("connect_error", err => {
			socket.close();
			reject(err);
		});
	});
}

/** What the users service saw of each users.me call: recorded by a broker middleware. */
const seenByUsersMe: { requestID: string | null; traceId?: string }[] = [];
const recordUsersMe: Middleware = {
	localAction(next: ActionHandler, action: ActionSchema) {
		if (action.name !== "users.me") return next;
		return (ctx: Context<unknown, CallMeta>) => {
			seenByUsersMe.push({ requestID: ctx.requestID, traceId: ctx.meta.traceId });
			return next(ctx);
		};
	},
};

describe("gateway", () => {
	let sys: RunningSystem;
	let base: string;

	before(async () => {
		baseEnv();
		sys = await startBroker(["api", "users"], { middlewares: [recordUsersMe] });
		base = sys.baseUrl;
	});
	after(() => sys?.stop());

	describe("health, trace ids and errors", () => {
		it("GET /health answers ok with the node and its services", async () => {
			const res = await http(base, "GET", "/health");
			assert.equal(res.status, 200);
			assert.equal(res.body.status, "ok");
			assert.equal(res.body.node, sys.broker.nodeID);
			assert.deepEqual([...res.body.services].sort(), ["api", "users"]);
		});

		it("GET /health/live and /health/ready: up, and ready with each dependency of this node checked", async () => {
			const live = await http(base, "GET", "/health/live");
			assert.equal(live.status, 200);
			assert.equal(live.body.node, sys.broker.nodeID);
			const ready = await http(base, "GET", "/health/ready");
			assert.equal(ready.status, 200);
			assert.equal(ready.body.status, "ready");
			assert.deepEqual(ready.body.failing, []);
			// Embedded: the users service's PGlite is this node's PostgreSQL.
			assert.deepEqual(Object.keys(ready.body.checks), ["postgresql", "services"]);
		});

		it("echoes the client's X-Trace-Id, makes one otherwise, on every response", async () => {
			const mine = await http(base, "GET", "/health", { headers: { "x-trace-id": "client-trace-42" } });
			assert.equal(mine.headers.get("x-trace-id"), "client-trace-42");
			const made = await http(base, "GET", "/health");
			assert.match(made.headers.get("x-trace-id") ?? "", /^[0-9a-f-]{36}$/);
			const hostile = await http(base, "GET", "/health", { headers: { "x-trace-id": "<script>alert(1)</script>" } });
			assert.notEqual(hostile.headers.get("x-trace-id"), "<script>alert(1)</script>");
			const missing = await http(base, "GET", "/no/such/route", { headers: { "x-trace-id": "t-404" } });
			assert.equal(missing.status, 404);
			assert.deepEqual(missing.body, { statusCode: 404, code: "NOT_FOUND", message: "Not found", traceId: "t-404" });
			const err = await http(base, "GET", "/users/me", { headers: { "x-trace-id": "t-401" } });
			assert.equal(err.body.traceId, "t-401");
			assert.equal(err.headers.get("x-trace-id"), "t-401");
		});

		it("carries the trace id into the call context on the service side", async () => {
			const u = await registerUser(base, "trace");
			const res = await http(base, "GET", "/users/me", { token: u.accessToken, headers: { "x-trace-id": "joined-7" } });
			assert.equal(res.status, 200);
			assert.ok(seenByUsersMe.some(c => c.requestID === "joined-7" && c.traceId === "joined-7"), JSON.stringify(seenByUsersMe));
		});

		it("answers an unknown method on a known path with 404, and never leaks a stack", async () => {
			const res = await http(base, "DELETE", "/roles", { token: (await registerUser(base, "m")).accessToken });
			assert.equal(res.status, 404);
			assert.equal(res.body.code, "NOT_FOUND");
		});
	});

	describe("CORS", () => {
		it("answers a preflight from an allowed origin exactly, with credentials", async () => {
			const res = await fetch(`${base}/users/me`, {
				method: "OPTIONS",
				headers: { origin: ORIGIN, "access-control-request-method": "PATCH", "access-control-request-headers": "authorization,content-type,x-trace-id" },
			});
			assert.equal(res.status, 204);
			assert.equal(res.headers.get("access-control-allow-origin"), ORIGIN);
			assert.equal(res.headers.get("access-control-allow-credentials"), "true");
			const headers = (res.headers.get("access-control-allow-headers") ?? "").toLowerCase();
			for (const h of ["authorization", "content-type", "x-trace-id"]) assert.ok(headers.includes(h), h);
			const methods = res.headers.get("access-control-allow-methods") ?? "";
			for (const m of ["GET", "POST", "PUT", "PATCH", "DELETE"]) assert.ok(methods.includes(m), m);
		});

		it("puts CORS headers on successes and on errors, even before the body is parsed", async () => {
			const ok = await http(base, "GET", "/health", { headers: { origin: ORIGIN } });
			assert.equal(ok.headers.get("access-control-allow-origin"), ORIGIN);
			const unauthorized = await http(base, "GET", "/users/me", { headers: { origin: ORIGIN } });
			assert.equal(unauthorized.status, 401);
			assert.equal(unauthorized.headers.get("access-control-allow-origin"), ORIGIN);
			const malformed = await http(base, "POST", "/auth/login", { headers: { origin: ORIGIN, "content-type": "application/json" }, rawBody: "{oops" });
			assert.equal(malformed.status, 400);
			assert.equal(malformed.headers.get("access-control-allow-origin"), ORIGIN);
			assert.ok((ok.headers.get("access-control-expose-headers") ?? "").includes("X-Trace-Id"));
		});

		it("gives a foreign origin no CORS grant", async () => {
			const res = await http(base, "GET", "/health", { headers: { origin: "http://evil.example" } });
			assert.equal(res.headers.get("access-control-allow-origin"), null);
			assert.equal(res.status, 403);
			assert.equal(res.body.code, "FORBIDDEN");
		});
	});

	describe("API documentation", () => {
		it("documents exactly the routes the gateway serves", async () => {
			const aliases = (await sys.broker.call("api.listAliases")) as { methods: string; fullPath: string }[];
			const served = new Set(aliases.map(a => `${a.methods.toUpperCase()} ${a.fullPath.replace(/:([A-Za-z]+)/g, "{$1}").replace(/\/+$/, "") || "/"}`));
			const documented = new Set<string>();
			// The gateway serves the routes of the committed document (services it has not met answer
			// 503) and what the registry declares; here the two are the same.
			const paths = JSON.parse(fs.readFileSync(API_SNAPSHOTS.openapi, "utf8")).paths as Record<string, Record<string, unknown>>;
			for (const [p, ops] of Object.entries(paths)) {
				for (const method of Object.keys(ops)) if (["get", "post", "put", "patch", "delete"].includes(method)) documented.add(`${method.toUpperCase()} ${p}`);
			}
			const undocumented = [...served].filter(r => !documented.has(r));
			const notServed = [...documented].filter(r => !served.has(r));
			assert.deepEqual(undocumented, [], "served but not documented");
			assert.deepEqual(notServed, [], "documented but not served");
			assert.ok(served.size >= 18);
		});

		it("serves the document and a local Swagger UI at /docs", async () => {
			const json = await http(base, "GET", "/docs/openapi.json");
			assert.equal(json.status, 200);
			assert.equal(json.body.openapi, "3.0.3");
			const page = await fetch(`${base}/docs`);
			assert.equal(page.status, 200);
			assert.match(page.headers.get("content-type") ?? "", /text\/html/);
			assert.match(await page.text(), /swagger-ui-bundle\.js/);
			const asset = await fetch(`${base}/docs/ui/swagger-ui-bundle.js`);
			assert.equal(asset.status, 200);
			assert.ok((await asset.arrayBuffer()).byteLength > 100_000);
		});
	});

	describe("sockets", () => {
		let token: string;
		let userId: number;
		before(async () => {
			const u = await registerUser(base, "sock");
			token = u.accessToken;
			userId = u.id;
		});

		it("accepts a valid token on /chat and /notifications over websocket alone and joins user:<id>", async () => {
			const chat = await connect(base, "/chat", { auth: { token } });
			const notif = await connect(base, "/notifications", { auth: { token: `Bearer ${token}` } });
			try {
				const inChat = (await sys.broker.call("api.getClients", { namespace: "/chat", room: `user:${userId}` })) as string[];
				const inNotif = (await sys.broker.call("api.getClients", { namespace: "/notifications", room: `user:${userId}` })) as string[];
				assert.deepEqual(inChat, [chat.id]);
				assert.deepEqual(inNotif, [notif.id]);
			} finally {
				chat.close();
				notif.close();
			}
		});

		it("shows a user online while it has a /chat socket, on any device, and offline after the last one", async () => {
			const u = await registerUser(base, "presence");
			const other = await registerUser(base, "watcher");
			const statusOf = async () => (await http(base, "GET", `/users/${u.id}`, { token: other.accessToken })).body.status;
			assert.equal(await statusOf(), "offline");
			const first = await connect(base, "/chat", { auth: { token: u.accessToken } });
			const second = await connect(base, "/chat", { auth: { token: u.accessToken } });
			await waitFor(async () => (await statusOf()) === "online");
			first.close();
			await new Promise(r => setTimeout(r, 200));
			assert.equal(await statusOf(), "online", "one device is still connected");
			second.close();
			await waitFor(async () => (await statusOf()) === "offline");
			const batch = await http(base, "POST", "/users/batch", { token: other.accessToken, body: { ids: [u.id, other.id] } });
			assert.deepEqual(batch.body.map((x: { status: string }) => x.status), ["offline", "offline"]);
		});

		it("accepts the Authorization header on the handshake", async () => {
			const s = await connect(base, "/chat", { extraHeaders: { authorization: `Bearer ${token}` } });
			s.close();
		});

		it("refuses a missing, expired or forged token with connect_error Unauthorized", async () => {
			const now = Math.floor(Date.now() / 1000);
			const expired = jwt.sign({ sub: String(userId), username: "x", roles: ["user"], iat: now - 100, exp: now - 10 }, SECRET);
			const forged = jwt.sign({ sub: String(userId), username: "x", roles: ["user"] }, "not-the-secret-at-all-123456");
			for (const auth of [{}, { token: expired }, { token: forged }, { token: "garbage" }, { token: 12 }]) {
				await assert.rejects(connect(base, "/chat", { auth }), (err: Error) => err.message === "Unauthorized");
			}
		});
	});
});

describe("gateway rate limits", () => {
	let sys: RunningSystem;
	before(async () => {
		baseEnv();
		process.env.RATE_LIMIT = "3";
		process.env.RATE_LIMIT_AUTH = "2";
		sys = await startBroker(["api", "users"]);
	});
	after(() => sys?.stop());

	it("limits the /auth routes per address with 429 and Retry-After", async () => {
		// Burst = twice the rate per second: 4 pass, the 5th is refused.
		const statuses: number[] = [];
		let limited: Awaited<ReturnType<typeof http<any>>> | null = null;
		for (let i = 0; i < 6; i++) {
			const res = await http(sys.baseUrl, "POST", "/auth/login", { body: { email: "nobody@example.test", password: "whatever1" } });
			statuses.push(res.status);
			if (res.status === 429) limited = res;
		}
		assert.deepEqual(statuses.slice(0, 4), [400, 400, 400, 400]);
		assert.equal(statuses[4], 429);
		assert.ok(limited);
		assert.equal(limited.body.code, "RATE_LIMITED");
		assert.ok(Number(limited.headers.get("retry-after")) >= 1);
	});

	it("limits socket events per socket with a RATE_LIMITED ack, and says when a service is down", async () => {
		await new Promise(r => setTimeout(r, 2100));
		const u = await registerUser(sys.baseUrl, "rls");
		const socket = await connect(sys.baseUrl, "/chat", { auth: { token: u.accessToken } });
		try {
			const acks: { ok: boolean; error?: { code: string; details?: unknown } }[] = [];
			for (let i = 0; i < 7; i++) acks.push(await new Promise(resolve => socket.emit("typing", { conversationId: "abc", isTyping: true }, resolve)));
			// This broker runs no conversations service: the first six get 503, the seventh the limit.
			assert.deepEqual(acks.slice(0, 6).map(a => a.error?.code), Array(6).fill("SERVICE_UNAVAILABLE"));
			assert.equal(acks[6].error?.code, "RATE_LIMITED");
			assert.ok(socket.connected, "a limited socket stays connected");
		} finally {
			socket.close();
		}
	});

	it("limits authenticated routes per user, not per address", async () => {
		await new Promise(r => setTimeout(r, 2100)); // let the address bucket refill for two registrations
		const a = await registerUser(sys.baseUrl, "rla");
		const b = await registerUser(sys.baseUrl, "rlb");
		const statuses: number[] = [];
		for (let i = 0; i < 8; i++) statuses.push((await http(sys.baseUrl, "GET", "/users/me", { token: a.accessToken })).status);
		assert.deepEqual(statuses.slice(0, 6), [200, 200, 200, 200, 200, 200]);
		assert.equal(statuses[6], 429);
		// Same address, other user: its own bucket.
		assert.equal((await http(sys.baseUrl, "GET", "/users/me", { token: b.accessToken })).status, 200);
		await new Promise(r => setTimeout(r, 1100));
		assert.equal((await http(sys.baseUrl, "GET", "/users/me", { token: a.accessToken })).status, 200, "refilled after a second");
	});
});

describe("gateway defaults", () => {
	let sys: RunningSystem;
	before(async () => {
		baseEnv();
		sys = await startBroker(["api", "users"]);
	});
	after(() => sys?.stop());

	it("lets a chatty client through: 40 quick requests of one user all pass", async () => {
		const u = await registerUser(sys.baseUrl, "chatty");
		const results = await Promise.all(Array.from({ length: 40 }, () => http(sys.baseUrl, "POST", "/users/batch", { token: u.accessToken, body: { ids: [u.id] } })));
		assert.deepEqual(results.filter(r => r.status !== 200).map(r => r.status), []);
	});

	it("lets 10 /auth requests a second from one address through", async () => {
		const results = await Promise.all(Array.from({ length: 10 }, () => http(sys.baseUrl, "POST", "/auth/refresh", { body: { refreshToken: "unknown" } })));
		assert.deepEqual(results.map(r => r.status), Array(10).fill(401));
	});
});

describe("gateway without the users service", () => {
	let sys: RunningSystem;
	before(async () => {
		baseEnv();
		sys = await startBroker(["api"]);
	});
	after(() => sys?.stop());

	it("answers 503 SERVICE_UNAVAILABLE for routes whose service runs nowhere", async () => {
		const token = jwt.sign({ sub: "1", username: "x", roles: ["user"] }, SECRET, { expiresIn: 60 });
		const me = await http(sys.baseUrl, "GET", "/users/me", { token });
		assert.equal(me.status, 503);
		assert.equal(me.body.code, "SERVICE_UNAVAILABLE");
		const login = await http(sys.baseUrl, "POST", "/auth/login", { body: { email: "a@b.test", password: "x" } });
		assert.equal(login.status, 503);
		assert.equal(login.body.code, "SERVICE_UNAVAILABLE");
		const health = await http(sys.baseUrl, "GET", "/health");
		assert.equal(health.status, 200);
		assert.deepEqual(health.body.services, ["api"]);
	});
});
