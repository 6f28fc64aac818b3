/**
 * Fault: the real PostgreSQL server stops (`pg_ctlcluster … stop -m fast`, started again in a
 * `finally`) under a running cluster laid out as Compose does: a gateway, a users node (its
 * readiness on HEALTH_PORT), a chat node, a notifications node, as separate processes over RabbitMQ.
 *
 * While it is down, what needs it (login, register, refresh) answers 503 SERVICE_UNAVAILABLE with
 * Retry-After, fast (never past 10 s); two users who
 * the users node's `/health/ready` says 503 naming `postgresql`, while the gateway, which does not
 * use PostgreSQL, stays ready; two users who are connected keep chatting (messages and conversations live in MongoDB or the embedded store).
 * After it is back, logins work again within 30 s, without restarting anything. Prints the times.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import { after, before, describe, it } from "node:test";
import type { Socket } from "socket.io-client";
import { emitWithin, type FaultCluster, faultCluster, faultSocket, withNodeLogs } from "../helpers/fault-cluster";
import { freePort, startNode, waitForHealth, type NodeProcess } from "../helpers/processes";
import { http, registerUser, skipWithoutAmqp, skipWithoutPostgres, tempDir, waitFor } from "../helpers/system";

/** The local PostgreSQL cluster this machine runs (Debian's layout), if the test may stop it. */
function localCluster(): string | null {
	if (process.env.FAULTS_PG_RESTART === "0") return null;
	try {
		const versions = fs.readdirSync("/etc/postgresql");
		return versions.length === 1 ? versions[0] : null;
	} catch {
		return null;
	}
}
const version = localCluster();
const skip = skipWithoutAmqp || skipWithoutPostgres || (version ? false : "needs the local PostgreSQL cluster (pg_ctlcluster); FAULTS_PG_RESTART=0 skips");
const pgctl = (action: "start" | "stop") =>
	execFileSync("pg_ctlcluster", ["--skip-systemctl-redirect", version!, "main", action, ...(action === "stop" ? ["-m", "fast"] : [])], { stdio: "pipe", timeout: 60_000 });

const OUTAGE_MS = 10_000;

describe("fault: PostgreSQL restarts under a running cluster", { skip }, () => {
	const logDir = tempDir("parley-fault-pg-");
	let cluster: FaultCluster;
	const nodes: Record<string, NodeProcess> = {};
	let base = "";
	let usersHealth = "";
	const sockets: Socket[] = [];

	before(async () => {
		cluster = await faultCluster("parley-fp");
		const shared = cluster.env;
		const healthPort = await freePort();
		usersHealth = `http://127.0.0.1:${healthPort}`;
		nodes.users = startNode({ ...shared, SERVICES: "users", HEALTH_PORT: String(healthPort), DATA_DIR: tempDir() }, logDir, "users");
		nodes.chat = startNode({ ...shared, SERVICES: "conversations,messages,files", DATA_DIR: tempDir() }, logDir, "chat");
		nodes.notifications = startNode({ ...shared, SERVICES: "notifications", DATA_DIR: tempDir() }, logDir, "notifications");
		const port = await freePort();
		base = `http://127.0.0.1:${port}`;
		nodes.api = startNode({ ...shared, SERVICES: "api", PORT: String(port), DATA_DIR: tempDir() }, logDir, "api");
		await waitForHealth(base, ["users", "conversations", "messages", "notifications"], 90_000);
		await waitFor(async () => (await http(usersHealth, "GET", "/health/ready")).status === 200, 30_000, 250);
	});

	after(async () => {
		for (const s of sockets) s.close();
		await cluster?.teardown(Object.values(nodes));
	});

	it("503 fast while it is down, chats keep flowing, everything back within 30 s of its return", withNodeLogs(nodes, async () => {
		const a = await registerUser(base, "pa");
		const b = await registerUser(base, "pb");
		const sa = await faultSocket(base, a.accessToken, true);
		const sb = await faultSocket(base, b.accessToken, true);
		sockets.push(sa, sb);
		// The chat node may not have met the gateway node's users service yet: a careful client retries.
		const conv = await waitFor(async () => {
			const ack = await emitWithin(sa, "conversation:create", { type: "group", name: "through the outage", participants: [b.id] });
			return ack.ok ? ack : null;
		}, 30_000, 250);
		const received = new Set<string>();
		sb.on("message:created", (m: { id: string; conversation_id: string }) => {
			if (m.conversation_id === conv.data.id) received.add(m.id);
		});
		const login = () => http(base, "POST", "/auth/login", { body: { email: a.email, password: a.password } });
		assert.equal((await login()).status, 200);

		let stoppedAt = 0;
		let startedAt = 0;
		const slowest = { login: 0, refresh: 0, register: 0 };
		let readyFailing: string[] | undefined;
		const sentDuring: string[] = [];
		try {
			pgctl("stop");
			stoppedAt = Date.now();

			// What needs PostgreSQL: 503 with Retry-After, well within 10 s.
			for (let i = 0; i < 5; i++) {
				for (const [name, call] of [
					["login", login],
					["refresh", () => http(base, "POST", "/auth/refresh", { body: { refreshToken: a.refreshToken } })],
					["register", () => http(base, "POST", "/auth/register", { body: { email: `pg${i}@example.test`, password: "password 123", username: `pgdown${i}` } })],
				] as const) {
					const t = Date.now();
					const res = await call();
					const took = Date.now() - t;
					slowest[name] = Math.max(slowest[name], took);
					assert.equal(res.status, 503, `${name} while PostgreSQL is down: ${res.status} ${res.text}`);
					assert.equal(res.body?.code, "SERVICE_UNAVAILABLE", `${name}: ${res.text}`);

					assert.ok(res.headers.get("retry-after"), "Retry-After");
					assert.ok(took < 10_000, `${name} answered in ${took} ms`);
				}
			}

			readyFailing = await waitFor(async () => {
				const res = await http(usersHealth, "GET", "/health/ready");
				return res.status === 503 && res.body.failing?.includes("postgresql") ? (res.body.failing as string[]) : null;
			}, 15_000, 250);
			assert.equal((await http(base, "GET", "/health/ready")).status, 200, "the gateway does not use PostgreSQL: it stays ready");

			// Connected users keep chatting.
			for (let i = 0; i < 20; i++) {
				const ack = await emitWithin(sa, "message:send", { conversationId: conv.data.id, content: `during ${i}`, clientId: `pg-${i}` }, 10_000);
				assert.ok(ack.ok, `send ${i} while PostgreSQL is down: ${JSON.stringify(ack.error)}`);
				sentDuring.push(ack.data.id);
			}
			await waitFor(async () => sentDuring.every(id => received.has(id)), 10_000, 50);
			// Down for at least 10 s, so the pools' broken connections and retries are all exercised.
			await new Promise(r => setTimeout(r, Math.max(0, OUTAGE_MS - (Date.now() - stoppedAt))));
		} finally {
			pgctl("start");
			startedAt = Date.now();
		}

		const loginBack = await waitFor(async () => ((await login()).status === 200 ? Math.max(1, Date.now() - startedAt) : null), 30_000, 250);
		const readyBack = await waitFor(async () => ((await http(usersHealth, "GET", "/health/ready")).status === 200 ? Math.max(1, Date.now() - startedAt) : null), 30_000, 250);
		for (const [name, node] of Object.entries(nodes)) assert.equal(node.child.exitCode, null, `${name} is still running (log: ${node.logFile})`);

		console.log(
			`  PostgreSQL down ${startedAt - stoppedAt} ms; slowest 503: login ${slowest.login} ms, refresh ${slowest.refresh} ms, register ${slowest.register} ms; ` +
				`users node /health/ready failing ${JSON.stringify(readyFailing)}; ${sentDuring.length} messages sent and delivered meanwhile; ` +
				`login back ${loginBack} ms and the users node ready ${readyBack} ms after PostgreSQL started`,
		);
	}));
});
