/**
 * Every setting of a node comes from the environment (README.md, "Configuration").
 * Read at call time, not import time, so a test can set the environment first.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";

export const ALL_SERVICES = ["api", "users", "conversations", "messages", "notifications", "files"] as const;

function intEnv(name: string, fallback: number, min = 0): number {
	const raw = process.env[name];
	if (raw == null || raw.trim() === "") return fallback;
	const value = Number(raw);
	if (!Number.isFinite(value) || value < min) {
		throw new Error(`Environment variable ${name} must be a number >= ${min}, got "${raw}"`);
	}
	return Math.floor(value);
}

function listEnv(name: string, fallback: string[]): string[] {
	const raw = process.env[name];
	if (raw == null || raw.trim() === "") return fallback;
	return raw
		.split(",")
		.map(s => s.trim())
		.filter(Boolean);
}

export function dataDir(): string {
	return path.resolve(process.env.DATA_DIR || "./data");
}

export function isProduction(): boolean {
	return process.env.NODE_ENV === "production";
}

export const config = {
	get port() {
		return intEnv("PORT", 3000);
	},
	get services() {
		return listEnv("SERVICES", [...ALL_SERVICES]);
	},
	get transporter() {
		return process.env.TRANSPORTER || null;
	},
	/** The Prometheus metrics port of this node (GET /metrics); unset or 0: metrics off. */
	get metricsPort() {
		const port = intEnv("METRICS_PORT", 0);
		return port > 0 ? port : null;
	},
	/** A port for /health/live and /health/ready on any node (lib/readiness.ts); unset or 0: none. */
	get healthPort() {
		const port = intEnv("HEALTH_PORT", 0);
		return port > 0 ? port : null;
	},
	/** Moleculer's tracing exporter (e.g. "Console"); unset: tracing off. */
	get tracingExporter() {
		return process.env.TRACING_EXPORTER?.trim() || null;
	},
	get databaseUrl() {
		return process.env.DATABASE_URL || null;
	},
	get mongoUrl() {
		return process.env.MONGO_URL || null;
	},
	/** Redis for the shared Moleculer cache (redis:// or rediss://); unset: each node caches in its own memory. */
	get redisUrl() {
		const raw = process.env.REDIS_URL?.trim();
		if (!raw) return null;
		if (!/^rediss?:\/\/[^/]/i.test(raw)) throw new Error("Environment variable REDIS_URL must be a redis:// or rediss:// URL"); // not echoed: it may hold a password
		return raw;
	},
	get dataDir() {
		return dataDir();
	},
	get namespace() {
		return process.env.NAMESPACE || "";
	},
	get corsOrigins() {
		// Read on every cross-origin request: parsed again only when the variable changed.
		return parsedEnv("CORS_ORIGINS", () => listEnv("CORS_ORIGINS", ["http://localhost:3000", "http://localhost:5173"]));
	},
	/** Requests a second per user: REST requests, and socket events (all its sockets on a node together); 0 = off. */
	get rateLimit() {
		return intEnv("RATE_LIMIT", 20);
	},
	/** Requests a second per client address on the unauthenticated /auth routes; 0 = off. */
	get rateLimitAuth() {
		return intEnv("RATE_LIMIT_AUTH", 10);
	},
	/** Largest file accepted, in bytes (25 MiB by default). */
	get fileMaxBytes() {
		return intEnv("FILE_MAX_BYTES", 25 * 1024 * 1024, 1);
	},
	/** Bytes of files one user may keep (FILE_QUOTA_BYTES, default 1 GiB). */
	get fileQuotaBytes() {
		return intEnv("FILE_QUOTA_BYTES", 1024 * 1024 * 1024, 1);
	},
	/** Large request bodies (base64 uploads) read at once on this node; more wait their turn with 503. */
	get largeBodiesInFlight() {
		return intEnv("LARGE_BODIES_IN_FLIGHT", 4, 1);
	},
	get accessTokenTtlSeconds() {
		return intEnv("ACCESS_TOKEN_TTL", 15 * 60, 1);
	},
	get refreshTokenTtlSeconds() {
		return intEnv("REFRESH_TOKEN_TTL", 30 * 24 * 3600, 1);
	},
	/** Seconds without an event from any of a user's sockets before it shows `away` (default 5 minutes). */
	get presenceAwaySeconds() {
		return intEnv("PRESENCE_AWAY_SECONDS", 300, 1);
	},
	get bcryptRounds() {
		return intEnv("BCRYPT_ROUNDS", 10, 4);
	},
	/**
	 * How many reverse proxies in front of the gateway append to X-Forwarded-For: `true` is one,
	 * a number is that many, `false` or unset is none (the socket's address is the client's).
	 */
	get trustProxyHops() {
		// Read on every request (client address, rate limits): parsed again only when it changed.
		return parsedEnv("TRUST_PROXY", trustProxyHops);
	},	get logLevel() {
		return process.env.LOG_LEVEL || "info";
	},
	get adminEmail() {
		return process.env.ADMIN_EMAIL || null;
	},
	get adminPassword() {
		return process.env.ADMIN_PASSWORD || null;
	},
	get adminUsername() {
		return process.env.ADMIN_USERNAME || "admin";
	},
};

let cachedSecret: { rawDir: string | undefined; env: string | undefined; key: crypto.KeyObject } | null = null;

/**
 * The HMAC key for access tokens. JWT_SECRET wins; in production it is required.
 * Otherwise one is generated once and kept in DATA_DIR, so tokens survive a restart.
 * Returned as a KeyObject: jsonwebtoken with a string secret first tries createPublicKey
 * on it and throws, which costs ~0.5 ms a verify (measured: ~2,100 req/s against ~12,700 with a KeyObject).
 */
export function jwtSecret(): crypto.KeyObject {
	const env = process.env.JWT_SECRET;
	// Read on every verify: the variables as they are, before resolving any path.
	const rawDir = process.env.DATA_DIR;
	if (cachedSecret && cachedSecret.env === env && cachedSecret.rawDir === rawDir) return cachedSecret.key;
	const dir = dataDir();
	let secret: string;
	if (env) {
		if (env.length < 16) throw new Error("JWT_SECRET must be at least 16 characters long");
		secret = env;
	} else {
		if (isProduction()) throw new Error("JWT_SECRET is required when NODE_ENV=production");
		const file = path.join(dir, "jwt-secret");
		fs.mkdirSync(dir, { recursive: true });
		try {
			fs.writeFileSync(file, crypto.randomBytes(48).toString("base64url"), { flag: "wx", mode: 0o600 });
		} catch (err) {
			if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
		}
		secret = fs.readFileSync(file, "utf8").trim();
	}
	const key = crypto.createSecretKey(Buffer.from(secret, "utf8"));
	cachedSecret = { rawDir, env, key };
	return key;
}

/** TRUST_PROXY as a number of proxies in front of the gateway. */
function trustProxyHops(): number {
	const raw = (process.env.TRUST_PROXY ?? "").trim().toLowerCase();
	if (raw === "" || raw === "false" || raw === "0") return 0;
	if (raw === "true") return 1;
	const hops = Number(raw);
	if (!Number.isInteger(hops) || hops < 0 || hops > 32) throw new Error(`Environment variable TRUST_PROXY must be true, false or a number of proxies, got "${raw}"`);
	return hops;
}

const parsedCache = new Map<string, { raw: string | undefined; value: unknown }>();

/** parse() of an environment variable, kept until the variable's value changes. */
function parsedEnv<T>(name: string, parse: () => T): T {
	const raw = process.env[name];
	const hit = parsedCache.get(name);
	if (hit && hit.raw === raw) return hit.value as T;
	const value = parse();
	parsedCache.set(name, { raw, value });
	return value;
}
