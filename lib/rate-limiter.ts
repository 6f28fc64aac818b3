/**
 * Token bucket per key (user id, client address, socket id), kept in this node's memory.
 * `ratePerSecond` tokens refill each second up to `burst`, so a client may sustain the rate
 * and briefly exceed it. Each gateway node limits on its own; behind a balancer with N api
 * nodes a client gets at most N times the rate.
 */
export interface TakeResult {
	ok: boolean;
	/** Seconds until one token is available again (when !ok). */
	retryAfter: number;
}

interface Bucket {
	tokens: number;
	updated: number;
}

export class RateLimiter {
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
