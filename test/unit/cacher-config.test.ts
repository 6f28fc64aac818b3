import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import { config } from "../../lib/config";
import { CACHE_TTL_SECONDS, MEMORY_CACHE_MAX_ENTRIES, cacher, redisOptions } from "../../moleculer.config";

const saved = process.env.REDIS_URL;
afterEach(() => {
	if (saved === undefined) delete process.env.REDIS_URL;
	else process.env.REDIS_URL = saved;
});

describe("cacher configuration", () => {
	it("is a bounded in-memory LRU with a TTL when REDIS_URL is unset", () => {
		delete process.env.REDIS_URL;
		assert.equal(config.redisUrl, null);
		assert.deepEqual(cacher(), { type: "MemoryLRU", options: { max: MEMORY_CACHE_MAX_ENTRIES, ttl: CACHE_TTL_SECONDS } });
		assert.equal(MEMORY_CACHE_MAX_ENTRIES, 10_000);
	});

	it("is Redis when REDIS_URL is set, failing fast rather than holding requests", () => {
		process.env.REDIS_URL = "redis://cache.internal:6380/2";
		const chosen = cacher() as { type: string; options: { ttl: number; redis: Record<string, unknown> } };
		assert.equal(chosen.type, "Redis");
		assert.equal(chosen.options.ttl, CACHE_TTL_SECONDS);
		assert.equal(chosen.options.redis.host, "cache.internal");
		assert.equal(chosen.options.redis.port, 6380);
		assert.equal(chosen.options.redis.db, 2);
		assert.equal(chosen.options.redis.maxRetriesPerRequest, 1);
		assert.ok(Number(chosen.options.redis.commandTimeout) > 0);
	});

	it("reads credentials, TLS and IPv6 from the URL", () => {
		const o = redisOptions("rediss://app:p%40ss@[::1]");
		assert.equal(o.host, "::1");
		assert.equal(o.port, 6379);
		assert.equal(o.username, "app");
		assert.equal(o.password, "p@ss");
		assert.equal(o.db, 0);
		assert.deepEqual(o.tls, {});
		assert.equal(redisOptions("redis://h").tls, undefined);
	});

	it("refuses a REDIS_URL that is not redis:// or rediss://, without echoing it", () => {
		process.env.REDIS_URL = "http://user:secret@host";
		assert.throws(() => config.redisUrl, (err: Error) => /REDIS_URL/.test(err.message) && !err.message.includes("secret"));
	});
});
