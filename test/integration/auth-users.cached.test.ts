/**
 * The whole auth and users suite again with the profile cache on, as a node runs it: the
 * in-memory cacher on the embedded store and, when TEST_DATABASE_URL and TEST_REDIS_URL are set,
 * Redis on PostgreSQL. Every broker the suite starts gets the cacher of moleculer.config.ts
 * (through ServiceBroker.defaultOptions); with Redis each broker gets keys of its own, since
 * the suite's extra users nodes have databases of their own.
 */
import crypto from "node:crypto";
import { after, before, describe } from "node:test";
import { ServiceBroker } from "moleculer";
import { skipWithoutPostgres } from "../helpers/system";
import { nodeCacher, skipWithoutRedis, type CacheKind } from "../helpers/users-cache";
import { runAuthUsersSuite } from "./auth-users.suite";

function everyBrokerCaches(kind: CacheKind) {
	const defaults = ServiceBroker.defaultOptions as unknown as Record<string, unknown>;
	before(() => {
		Object.defineProperty(defaults, "cacher", {
			configurable: true,
			enumerable: true,
			get: () => nodeCacher(kind, kind === "redis" ? `parley-test-${crypto.randomBytes(6).toString("hex")}` : undefined),
		});
	});
	after(() => {
		Object.defineProperty(defaults, "cacher", { configurable: true, enumerable: true, writable: true, value: null });
	});
}

describe("with the in-memory profile cache", () => {
	everyBrokerCaches("memory");
	runAuthUsersSuite("embedded");
});

describe("with the Redis profile cache", { skip: skipWithoutPostgres || skipWithoutRedis }, () => {
	everyBrokerCaches("redis");
	runAuthUsersSuite("postgres");
});
