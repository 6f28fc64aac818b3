/**
 * Broker options, all from the environment (README.md, "Configuration").
 * With no TRANSPORTER the node is the whole system in one process.
 */
import os from "node:os";
import type { BrokerOptions, Errors, Middleware } from "moleculer";
import { config, isProduction } from "./lib/config";
import { createChannelsMiddleware } from "./lib/durable-events";
import { metricsOptions, tracingOptions } from "./lib/metrics";
import { PromptDiscoverer } from "./lib/prompt-discoverer";
import { startHealthServer } from "./lib/readiness";
import { redisOptions } from "./lib/redis-options";
import { AuthorizeMiddleware } from "./middlewares/authorize.middleware";
import { TraceLogMiddleware } from "./middlewares/trace-log.middleware";

function transporter(): BrokerOptions["transporter"] {
	const url = config.transporter;
	if (!url) return null;
	if (/^amqps?:\/\//i.test(url)) {
		return {
			type: "AMQP",
			options: {
				url,
				// Transporter defaults stall every call ~44 ms (Nagle on, prefetch 1): ~18 calls/s through
				// a gateway, against ~7,250 with noDelay and a prefetch of 100 (measured on 2 cores).
				socketOptions: { noDelay: true },
				prefetch: 100,
				autoDeleteQueues: 60_000,
			},
		};
	}
	return url;
}

/** Entries a node's in-memory cache holds at most (least recently used go first). */
export const MEMORY_CACHE_MAX_ENTRIES = 10_000;
/** Default lifetime of a cache entry, seconds (an action or method may give its own). */
export const CACHE_TTL_SECONDS = 300;

// ioredis options from a REDIS_URL: shared with the rate limiters (lib/redis-options.ts).
export { redisOptions };

/**
 * The Moleculer cacher. With REDIS_URL: Redis, shared by every node (keys prefixed with
 * MOL-<NAMESPACE>-, so clusters sharing a Redis need distinct namespaces). Without: a bounded
 * LRU in each node's memory; then each node's cache is its own, and whoever caches must clean
 * every node's copy on a change (the users service does, see its forgetProfiles).
 *
 * MemoryLRU renews an entry's TTL on each read (lru-cache's updateAgeOnGet): a hot entry does not
 * expire by itself, so the TTL is an idle timeout there, never a freshness bound.
 */
export function cacher(): BrokerOptions["cacher"] {
	const url = config.redisUrl;
	if (url) return { type: "Redis", options: { ttl: CACHE_TTL_SECONDS, redis: redisOptions(url) } };
	return { type: "MemoryLRU", options: { max: MEMORY_CACHE_MAX_ENTRIES, ttl: CACHE_TTL_SECONDS } };
}

const brokerConfig: BrokerOptions = {
	namespace: config.namespace,
	nodeID: process.env.NODE_ID || `${os.hostname().toLowerCase()}-${process.pid}`,
	transporter: transporter(),
	logger: {
		type: "Console",
		options: {
			level: config.logLevel,
			formatter: isProduction() ? "json" : "short",
			colors: !isProduction(),
			moduleColors: false,
		},
	},
	logLevel: config.logLevel as BrokerOptions["logLevel"],
	requestTimeout: 15_000,
	// A node that died without saying goodbye (SIGKILL, power loss) is dropped after 15 s without
	// a heartbeat (the default is 30 s), so fewer calls go to it meanwhile.
	heartbeatInterval: 5,
	heartbeatTimeout: 15,
	// Only a request that a stopping node refused (it never ran) is sent again, to another node:
	// retrying anything else could run a non-idempotent action twice.
	retryPolicy: {
		enabled: true,
		retries: 5,
		delay: 100,
		maxDelay: 2000,
		factor: 2,
		check: (err: Error) => (err as Errors.MoleculerError).type === "SERVICE_NOT_AVAILABLE",
	},
	// Stop waits for calls in flight (SIGTERM: finish what was accepted, then leave).
	tracking: { enabled: true, shutdownTimeout: 15_000 },
	// A stopping node first tells the cluster it has no services, then waits this long for
	// that news to cross RabbitMQ before it refuses requests. The discoverer checks the heartbeats
	// every second, so a dead node is dropped at most about 18 s after it died (lib/prompt-discoverer.ts).
	registry: { strategy: "RoundRobin", preferLocal: true, stopDelay: 1000, discoverer: new PromptDiscoverer() } as BrokerOptions["registry"],
	circuitBreaker: { enabled: false },
	validator: true,
	cacher: cacher(),
	// Prometheus on METRICS_PORT, and the tracer with TRACING_EXPORTER (lib/metrics.ts); both off by default.
	metrics: metricsOptions(config.metricsPort),
	tracing: tracingOptions(config.tracingExporter),
	// Authorize first: it wraps innermost, so it runs after the params are validated and traced.
	middlewares: [AuthorizeMiddleware(), TraceLogMiddleware(), createChannelsMiddleware() as Middleware],
	// HEALTH_PORT: readiness for nodes without the gateway (their container healthchecks use it).
	started(broker) {
		const port = config.healthPort;
		if (port) healthServer = startHealthServer(broker, port);
	},
	stopped() {
		healthServer?.close();
		healthServer = null;
	},
};

let healthServer: import("node:http").Server | null = null;

export default brokerConfig;
