/**
 * PostgreSQL going away under a running system, with the real server behind a TCP proxy that the
 * test cuts and restores (the shared PostgreSQL itself is not stopped): requests that need it fail
 * fast with 503 SERVICE_UNAVAILABLE (never a 500, never a hang past 10 s), and everything works
 * again once it is back, without a restart; GET /health/ready says 503 "postgresql" meanwhile.
 * Chats between users already connected keep flowing: they do not need PostgreSQL.
 * Prints how long the answers and the recovery took.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, describe, it } from "node:test";
import { freePort } from "../helpers/processes";
import { call, connectSocket, type TestSocket, waitForEvent } from "../helpers/sockets";
import { clusterTestEnv, http, registerUser, skipWithoutPostgres, startBroker, type RunningSystem } from "../helpers/system";

/** A TCP proxy to PostgreSQL that can be cut (listener closed, every connection reset) and restored. */
class CuttableProxy {
	private server: net.Server | null = null;
	private readonly sockets = new Set<net.Socket>();
	constructor(
		private readonly port: number,
		private readonly target: { host: string; port: number },
	) {}

	open(): Promise<void> {
		const server = net.createServer(client => {
			const upstream = net.connect(this.target.port, this.target.host);
			for (const s of [client, upstream]) {
				this.sockets.add(s);
				s.on("close", () => this.sockets.delete(s));
				s.on("error", () => undefined);
			}
			client.pipe(upstream).pipe(client);
		});
		this.server = server;
		return new Promise(resolve => server.listen(this.port, "127.0.0.1", () => resolve()));
	}

	cut(): Promise<void> {
		for (const s of this.sockets) s.resetAndDestroy();
		const server = this.server;
		this.server = null;
		return new Promise(resolve => (server ? server.close(() => resolve()) : resolve()));
	}
}

describe("PostgreSQL outage", { skip: skipWithoutPostgres }, () => {
	let sys: RunningSystem;
	let proxy: CuttableProxy;
	let dropDb: () => Promise<void>;
	const sockets: TestSocket[] = [];

	before(async () => {
		dropDb = await clusterTestEnv("postgres-outage-secret-0123456789abcdef");
		const real = new URL(process.env.DATABASE_URL as string);
		const port = await freePort();
		proxy = new CuttableProxy(port, { host: real.hostname, port: Number(real.port || 5432) });
		await proxy.open();
		const viaProxy = new URL(real);
		viaProxy.host = `127.0.0.1:${port}`;
		process.env.DATABASE_URL = viaProxy.toString();
		// Every service: chats (their own store) must keep flowing while PostgreSQL is away.
		sys = await startBroker(["api", "users", "conversations", "messages", "notifications", "files"]);
	});
	after(async () => {
		for (const s of sockets) s.close();
		await proxy?.cut();
		await sys?.stop();
		await dropDb?.();
	});

	it("answers 503 fast while it is down, and recovers by itself when it is back", async () => {
		const base = sys.baseUrl;
		const user = await registerUser(base, "pgout");
		const login = { email: user.email, password: user.password };
		const other = await registerUser(base, "pgother");
		const [su, so] = [await connectSocket(base, user.accessToken), await connectSocket(base, other.accessToken)];
		sockets.push(su, so);
		const conv = await call(su, "conversation:create", { type: "private", participants: [other.id] });
		await call(so, "conversation:accept", { conversationId: conv.id });
		assert.equal((await http(base, "POST", "/auth/login", { body: login })).status, 200);
		const ready = await http(base, "GET", "/health/ready");
		assert.equal(ready.status, 200);
		assert.equal(ready.body.checks.postgresql, "ok");

		await proxy.cut();
		// Readiness names what is missing, so a load balancer stops sending here.
		const notReady = await http(base, "GET", "/health/ready");
		assert.equal(notReady.status, 503);
		assert.deepEqual(notReady.body.failing, ["postgresql"]);
		assert.equal((await http(base, "GET", "/health/live")).status, 200, "the process is still alive");
		const downAt = Date.now();
		for (const [what, request] of [
			["login", () => http(base, "POST", "/auth/login", { body: login })],
			["register", () => http(base, "POST", "/auth/register", { body: { username: `pgdown${Date.now() % 100000}`, email: `pgdown${Date.now()}@example.test`, password: "correct horse battery" } })],
			["refresh", () => http(base, "POST", "/auth/refresh", { body: { refreshToken: user.refreshToken } })],
		] as const) {
			const started = Date.now();
			const res = await request();
			const took = Date.now() - started;
			console.log(`  ${what} while PostgreSQL is down: ${res.status} ${res.body?.code} in ${took} ms`);
			assert.equal(res.status, 503, `${what}: ${JSON.stringify(res.body)}`);
			assert.equal(res.body.code, "SERVICE_UNAVAILABLE");
			assert.ok(res.headers.get("retry-after"), "Retry-After tells clients when to try again");
			assert.ok(took < 10_000, `${what} answered in ${took} ms`);
		}
		// A chat between connected users does not need PostgreSQL: it keeps flowing.
		const sentDuring = await call(su, "message:send", { conversationId: conv.id, content: "while PostgreSQL is down", clientId: "pg-down-1" });
		await waitForEvent(so, "message:created", m => m.id === sentDuring.id);
		// What the users service can answer from its cache still works.
		const me = await http(base, "GET", "/users/me", { token: user.accessToken });
		assert.ok(me.status === 200 || me.status === 503, `GET /users/me: ${me.status}`);

		await proxy.open();
		const backAt = Date.now();
		let recovered = 0;
		while (Date.now() - backAt < 30_000) {
			const res = await http(base, "POST", "/auth/login", { body: login });
			if (res.status === 200) {
				recovered = Date.now() - backAt;
				break;
			}
			await new Promise(r => setTimeout(r, 250));
		}
		console.log(`  down for ${backAt - downAt} ms; logins work again ${recovered} ms after PostgreSQL is back`);
		assert.ok(recovered > 0, "logins work again within 30 s, without a restart");
		assert.equal((await http(base, "GET", "/health/ready")).status, 200, "ready again");
	});
});
