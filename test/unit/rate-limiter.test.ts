import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { RateLimiter } from "../../lib/rate-limiter";

describe("RateLimiter (token bucket)", () => {
	it("lets a burst of twice the rate through, then refuses with the wait in seconds", () => {
		let now = 0;
		const limiter = new RateLimiter(5, undefined, () => now);
		for (let i = 0; i < 10; i++) assert.equal(limiter.take("a").ok, true, `request ${i}`);
		const refused = limiter.take("a");
		assert.equal(refused.ok, false);
		assert.equal(refused.retryAfter, 1);
		now += 200; // one token back at 5/s
		assert.equal(limiter.take("a").ok, true);
		assert.equal(limiter.take("a").ok, false);
		limiter.stop();
	});

	it("sustains exactly the configured rate", () => {
		let now = 0;
		const limiter = new RateLimiter(20, undefined, () => now);
		let passed = 0;
		// 10 seconds at 40 requests a second: the burst (40) plus 20 a second pass.
		for (let step = 0; step < 400; step++) {
			now = step * 25;
			if (limiter.take("u").ok) passed++;
		}
		assert.ok(passed >= 40 + 20 * 9 && passed <= 40 + 20 * 10 + 1, `passed ${passed}`);
		limiter.stop();
	});

	it("keeps keys apart, and rate 0 turns limiting off", () => {
		const now = 0;
		const limiter = new RateLimiter(1, 1, () => now);
		assert.equal(limiter.take("a").ok, true);
		assert.equal(limiter.take("a").ok, false);
		assert.equal(limiter.take("b").ok, true);
		limiter.stop();
		const off = new RateLimiter(0);
		assert.equal(off.enabled, false);
		for (let i = 0; i < 1000; i++) assert.equal(off.take("x").ok, true);
	});

	it("forgets full buckets when swept, so memory follows active clients", () => {
		let now = 0;
		const limiter = new RateLimiter(10, undefined, () => now);
		for (let i = 0; i < 100; i++) limiter.take(`k${i}`);
		assert.equal(limiter.size, 100);
		now += 60_000;
		limiter.sweep();
		assert.equal(limiter.size, 0);
		limiter.stop();
	});
});
