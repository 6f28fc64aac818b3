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
