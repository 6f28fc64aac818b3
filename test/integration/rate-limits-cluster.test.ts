/**
 * Rate limits across gateway nodes: with REDIS_URL two gateways together refuse a user's burst
 * above the limit (REST and socket events alike); without it each gateway counts on its own, as
 * the README says. Real Redis, real PostgreSQL (both gateways' users services share it), real HTTP
 * and sockets.
 */
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { after, before, describe, it } from "node:test";
import { connectSocket, emitAck, type TestSocket } from "../helpers/sockets";
import { clusterTestEnv, http, registerUser, skipWithoutPostgres, startBroker, type RunningSystem } from "../helpers/system";
import { TEST_REDIS_URL, skipWithoutRedis } from "../helpers/users-cache";

const RATE = 5; // per second, bursts up to 10
const BURST = 30;

async function gateways(redis: boolean): Promise<RunningSystem[]> {
	process.env.RATE_LIMIT = String(RATE);
	process.env.RATE_LIMIT_AUTH = "0";
	process.env.NAMESPACE = `rl-${crypto.randomBytes(4).toString("hex")}`;
	if (redis) process.env.REDIS_URL = TEST_REDIS_URL;
	else delete process.env.REDIS_URL;
	// Each gateway node in its own broker (no transporter needed: the limit is what they share).
	const nodes = [await startBroker(["api", "users"]), await startBroker(["api", "users"])];
	delete process.env.REDIS_URL;
	return nodes;
}

/** A burst of GET /users/me, alternating between the gateways, all at once: how many got through. */
async function restBurst(nodes: RunningSystem[], token: string): Promise<number> {
	const results = await Promise.all(Array.from({ length: BURST }, (_, i) => http(nodes[i % nodes.length].baseUrl, "GET", "/users/me", { token })));
	for (const r of results) assert.ok(r.status === 200 || r.status === 429, `status ${r.status}`);
	return results.filter(r => r.status === 200).length;
}

/** The same with socket events (made-up ones: counted, then answered NOT_FOUND). */
async function socketBurst(sockets: TestSocket[]): Promise<number> {
	const acks = await Promise.all(Array.from({ length: BURST }, (_, i) => emitAck(sockets[i % sockets.length], "no:such-event", {})));
	return acks.filter(a => a.error?.code !== "RATE_LIMITED").length;
}

describe("rate limits across gateways", { skip: skipWithoutPostgres || skipWithoutRedis }, () => {
	let dropDb: () => Promise<void>;
	const running: RunningSystem[] = [];
	const sockets: TestSocket[] = [];

	before(async () => {
		// A fresh database both gateways' users services share (gateways() sets the limits).
		dropDb = await clusterTestEnv("rate-limits-cluster-secret-0123456789");
	});
	after(async () => {
		for (const s of sockets) s.close();
		for (const sys of running) await sys.stop();
		await dropDb?.();
		delete process.env.NAMESPACE;
		delete process.env.DATABASE_URL;
	});

	it(`with REDIS_URL, two gateways together let ${RATE * 2} of a burst of ${BURST} through, on REST and on sockets`, async () => {
		const nodes = await gateways(true);
		running.push(...nodes);
		const user = await registerUser(nodes[0].baseUrl, "rl");
		assert.equal(await restBurst(nodes, user.accessToken), RATE * 2);
		const s1 = await connectSocket(nodes[0].baseUrl, user.accessToken);
		const s2 = await connectSocket(nodes[1].baseUrl, user.accessToken);
		sockets.push(s1, s2);
		assert.equal(await socketBurst([s1, s2]), RATE * 2);
	});

	it("without REDIS_URL each gateway counts on its own (per node, as documented)", async () => {
		const nodes = await gateways(false);
		running.push(...nodes);
		const user = await registerUser(nodes[0].baseUrl, "rm");
		assert.equal(await restBurst(nodes, user.accessToken), RATE * 2 * nodes.length);
	});
});
