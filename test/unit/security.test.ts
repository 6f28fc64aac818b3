import assert from "node:assert/strict";
import type { IncomingMessage } from "node:http";
import { afterEach, describe, it } from "node:test";
import { RevocationList } from "../../lib/session-revocations";
import type { AccessSession } from "../../lib/tokens";
import { GatewayHttpMixin } from "../../mixins/gateway-http.mixin";

const saved = process.env.TRUST_PROXY;
afterEach(() => {
	if (saved === undefined) delete process.env.TRUST_PROXY;
	else process.env.TRUST_PROXY = saved;
});

describe("client address behind proxies", () => {
	const clientIp = (GatewayHttpMixin.methods as Record<string, (this: unknown, req: IncomingMessage) => string>).clientIp;
	const req = (forwarded: string | undefined, remote = "10.0.0.1") =>
		({ headers: forwarded === undefined ? {} : { "x-forwarded-for": forwarded }, socket: { remoteAddress: remote } }) as unknown as IncomingMessage;

	it("ignores X-Forwarded-For unless TRUST_PROXY is set", () => {
		delete process.env.TRUST_PROXY;
		assert.equal(clientIp.call({}, req("1.2.3.4")), "10.0.0.1");
		process.env.TRUST_PROXY = "false";
		assert.equal(clientIp.call({}, req("1.2.3.4")), "10.0.0.1");
	});

	it("with one trusted proxy takes the entry it appended (the rightmost), not the client's", () => {
		process.env.TRUST_PROXY = "true";
		assert.equal(clientIp.call({}, req("6.6.6.6, 203.0.113.7")), "203.0.113.7");
		assert.equal(clientIp.call({}, req("203.0.113.7")), "203.0.113.7");
		assert.equal(clientIp.call({}, req(undefined)), "10.0.0.1", "no header: the proxy's own address");
		process.env.TRUST_PROXY = "1";
		assert.equal(clientIp.call({}, req("6.6.6.6,203.0.113.7")), "203.0.113.7");
	});

	it("with N trusted proxies takes the Nth entry from the right", () => {
		process.env.TRUST_PROXY = "2";
		assert.equal(clientIp.call({}, req("6.6.6.6, 198.51.100.9, 172.16.0.5")), "198.51.100.9");
		assert.equal(clientIp.call({}, req("198.51.100.9")), "198.51.100.9", "fewer entries than hops: the farthest known");
	});

	it("refuses a TRUST_PROXY that is neither a flag nor a number", () => {
		process.env.TRUST_PROXY = "yes please";
		assert.throws(() => clientIp.call({}, req("1.2.3.4")), /TRUST_PROXY/);
	});
});

describe("revocation list", () => {
	const session = (id: number, sid: string | null, ver = 0): Pick<AccessSession, "user" | "sid" | "ver"> => ({ user: { id, username: "u", roles: [] }, sid, ver });

	it("revokes one login by sid, older versions of an account, or all of a deleted one", () => {
		let now = 1_000_000;
		const list = new RevocationList(() => now);
		list.add({ userId: 1, sid: "a", reason: "logout", until: now + 60_000 });
		list.add({ userId: 2, minVersion: 3, reason: "password_changed", until: now + 60_000 });
		list.add({ userId: 3, all: true, reason: "account_deleted", until: now + 60_000 });
		assert.equal(list.isRevoked(session(1, "a")), true);
		assert.equal(list.isRevoked(session(1, "b")), false, "another login of the same user");
		assert.equal(list.isRevoked(session(2, "x", 2)), true);
		assert.equal(list.isRevoked(session(2, "x", 3)), false, "a token issued after the change");
		assert.equal(list.isRevoked(session(3, null, 99)), true);
		assert.equal(list.isRevoked(session(4, null)), false);
		// A lower minVersion arriving late does not undo a higher one.
		list.add({ userId: 2, minVersion: 1, reason: "roles_changed", until: now + 60_000 });
		assert.equal(list.isRevoked(session(2, "x", 2)), true);
		now += 60_001;
		list.sweep();
		assert.equal(list.size, 0, "forgotten once every token it covers has expired");
		list.add({ userId: 5, sid: "z", reason: "logout", until: now - 1 });
		assert.equal(list.size, 0, "an entry already moot is not kept");
	});
});

describe("work gate", () => {
	it("runs a few at once, queues a few more in order, refuses the rest at once with 503", async () => {
		const { WorkGate } = await import("../../lib/work-gate");
		const gate = new WorkGate(2, 1);
		const order: number[] = [];
		const releases: (() => void)[] = [];
		const job = (n: number) => () =>
			new Promise<number>(resolve => {
				order.push(n);
				releases.push(() => resolve(n));
			});
		const runs = [gate.run(job(1)), gate.run(job(2)), gate.run(job(3))];
		await assert.rejects(gate.run(job(4)), (err: { type?: string; data?: { retryAfter?: number } }) => err.type === "SERVICE_UNAVAILABLE" && err.data?.retryAfter === 1);
		await new Promise(r => setImmediate(r));
		assert.deepEqual(order, [1, 2], "two run, the third waits");
		assert.deepEqual(gate.load, { active: 2, waiting: 1 });
		releases[0]();
		await runs[0];
		await new Promise(r => setImmediate(r));
		assert.deepEqual(order, [1, 2, 3], "the one in line takes the freed slot");
		releases[1]();
		releases[2]();
		assert.deepEqual(await Promise.all(runs), [1, 2, 3]);
		assert.deepEqual(gate.load, { active: 0, waiting: 0 });
		// A job that fails frees its slot too.
		await assert.rejects(gate.run(() => Promise.reject(new Error("boom"))), /boom/);
		assert.deepEqual(gate.load, { active: 0, waiting: 0 });
	});
});
