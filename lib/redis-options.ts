/** ioredis options from a redis:// or rediss:// URL (Moleculer hands ioredis one argument). */
export function redisOptions(url: string) {
	const u = new URL(url);
	const db = Number(u.pathname.replace(/^\//, "") || 0);
	return {
		host: u.hostname.replace(/^\[(.*)\]$/, "$1"),
		port: Number(u.port || 6379),
		username: u.username ? decodeURIComponent(u.username) : undefined,
		password: u.password ? decodeURIComponent(u.password) : undefined,
		db: Number.isInteger(db) && db >= 0 ? db : 0,
		tls: u.protocol.toLowerCase() === "rediss:" ? {} : undefined,
		// A cache must never hold a request up: with Redis away a command fails fast and the
		// caller reads the database instead (ioredis' defaults would queue it for many seconds).
		maxRetriesPerRequest: 1,
		commandTimeout: 500,
	};
}

/**
 * One ioredis client per process for the gateway's shared state (rate limits, socket quotas),
 * counted by its users and closed with the last. Commands fail at once while Redis is away
 * (no offline queue): each user falls back to counting on its own node.
 */
let shared: { client: import("ioredis").Redis; users: number } | null = null;

export function acquireSharedRedis(url: string): import("ioredis").Redis {
	if (!shared) {
		// Loaded only when REDIS_URL is set: embedded mode needs no Redis client.
		const Redis = (require("ioredis") as { default: typeof import("ioredis").default }).default;
		const client = new Redis({ ...redisOptions(url), enableOfflineQueue: false });
		// While Redis is away its users fall back to this node; nothing else to do here.
		client.on("error", () => undefined);
		shared = { client, users: 0 };
	}
	shared.users++;
	return shared.client;
}

export function releaseSharedRedis(): void {
	if (shared && --shared.users <= 0) {
		shared.client.disconnect();
		shared = null;
	}
}
