/**
 * Rate limits. RateLimiter: a token bucket per key (user id, client address), kept in this
 * node's memory: `ratePerSecond` tokens refill each second up to `burst`, so a client may sustain
 * the rate and briefly exceed it; behind N gateway nodes a client gets up to N times the rate.
 * createLimiter: the same limit shared by every gateway through Redis when REDIS_URL is set.
 */
import { acquireSharedRedis, releaseSharedRedis } from "./redis-options";

export interface TakeResult {
	ok: boolean;
	/** Seconds until one token is available again (when !ok). */
	retryAfter: number;
}

interface Bucket {
	tokens: number;
	updated: number;
}

export class RateLimiter implements Limiter {
	private readonly buckets = new Map<string, Bucket>();
	private readonly sweeper: NodeJS.Timeout | null = null;
	readonly burst: number;

	constructor(
		readonly ratePerSecond: number,
		burst?: number,
		private readonly now: () => number = Date.now,
	) {
		this.burst = burst ?? Math.max(1, ratePerSecond * 2);
		if (ratePerSecond > 0) {
			// Full buckets carry no information; drop them so memory stays bounded by active clients.
			this.sweeper = setInterval(() => this.sweep(), 60_000);
			this.sweeper.unref();
		}
	}

	get enabled(): boolean {
		return this.ratePerSecond > 0;
	}

	take(key: string, cost = 1): TakeResult {
		if (!this.enabled) return { ok: true, retryAfter: 0 };
		const now = this.now();
		const bucket = this.buckets.get(key) ?? { tokens: this.burst, updated: now };
		bucket.tokens = Math.min(this.burst, bucket.tokens + ((now - bucket.updated) / 1000) * this.ratePerSecond);
		bucket.updated = now;
		if (bucket.tokens >= cost) {
			bucket.tokens -= cost;
			this.buckets.set(key, bucket);
			return { ok: true, retryAfter: 0 };
		}
		this.buckets.set(key, bucket);
		return { ok: false, retryAfter: Math.max(1, Math.ceil((cost - bucket.tokens) / this.ratePerSecond)) };
	}

	sweep(): void {
		const now = this.now();
		for (const [key, bucket] of this.buckets) {
			const tokens = bucket.tokens + ((now - bucket.updated) / 1000) * this.ratePerSecond;
			if (tokens >= this.burst) this.buckets.delete(key);
		}
	}

	get size(): number {
		return this.buckets.size;
	}

	stop(): void {
		if (this.sweeper) clearInterval(this.sweeper);
		this.buckets.clear();
	}
}

// ---- limits shared by every gateway node (REDIS_URL) ----

/** What a gateway asks of a limit: this node's token bucket, or one shared through Redis. */
export interface Limiter {
	readonly enabled: boolean;
	take(key: string): TakeResult | Promise<TakeResult>;
	stop(): void;
}

type RateLimiterRes = { msBeforeNext: number };
interface FlexibleLimiter {
	consume(key: string, points?: number): Promise<RateLimiterRes>;
}

/**
 * A limit of `ratePerSecond` (bursts up to twice that) for `name`. With a Redis URL every
 * gateway counts in Redis, so N gateways together allow the rate once, not N times
 * (rate-limiter-flexible: 2 × rate points per 2 s window per key). Should Redis not answer, each
 * node falls back to counting on its own (its insurance limiter), rather than refusing everyone.
 */
export function createLimiter(name: string, ratePerSecond: number, redisUrl: string | null, namespace: string): Limiter {
	if (ratePerSecond <= 0 || !redisUrl) return new RateLimiter(ratePerSecond);
	// Loaded only when limits are shared: embedded mode needs neither package.
	const { RateLimiterRedis, RateLimiterMemory } = require("rate-limiter-flexible") as typeof import("rate-limiter-flexible");
	// While Redis is away the insurance limiter counts on this node.
	const storeClient = acquireSharedRedis(redisUrl);
	const points = Math.max(1, ratePerSecond * 2);
	const duration = 2;
	const limiter: FlexibleLimiter = new RateLimiterRedis({
		storeClient,
		keyPrefix: `parley:${namespace || "default"}:rl:${name}`,
		points,
		duration,
		insuranceLimiter: new RateLimiterMemory({ points, duration }),
	});
	return {
		enabled: true,
		async take(key: string): Promise<TakeResult> {
			try {
				await limiter.consume(key);
				return { ok: true, retryAfter: 0 };
			} catch (res) {
				if (res instanceof Error) throw res;
				return { ok: false, retryAfter: Math.max(1, Math.ceil((res as RateLimiterRes).msBeforeNext / 1000)) };
			}
		},
		stop: releaseSharedRedis,
	};
}
