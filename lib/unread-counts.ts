/**
 * Unread notification counts kept per user in this node's memory, so that a push of
 * `notification:count` costs no count query: a count is read from the store once (for every
 * user missing in one query), then moved by the notifications this node stores.
 *
 * Exact, never estimated by hand:
 * - a count moves only by the documents an insert reports as stored (a redelivered event adds
 *   nothing);
 * - any other change (read, removed, a deleted message or account) forgets the user's count:
 *   the next push counts again;
 * - a count read while a change for that user was under way is used but not kept (it may or may
 *   not include the change);
 * - another notifications node that changes a user's notifications has this node forget them
 *   (the service's forgetCounts action, acknowledged before the change is answered);
 * - entries expire after `ttlMs` all the same, and the least recently used go past `max`.
 */

export type CountLoader = (userIds: number[]) => Promise<Map<number, number>>;

export class UnreadCounts {
	private readonly counts = new Map<number, { n: number; at: number }>();
	/** Users whose count is being read; true once a change for them came in meanwhile. */
	private readonly loading = new Map<number, { changed: boolean; readers: number }>();
	private hits = 0;
	private misses = 0;

	constructor(
		private readonly load: CountLoader,
		private readonly options: { max: number; ttlMs: number } = { max: 50_000, ttlMs: 10 * 60_000 },
	) {}

	/** The unread count of each user: kept ones at once, the others in one load. */
	async get(userIds: number[]): Promise<Map<number, number>> {
		const out = new Map<number, number>();
		const missing: number[] = [];
		const now = Date.now();
		for (const id of new Set(userIds)) {
			const kept = this.counts.get(id);
			if (kept && now - kept.at < this.options.ttlMs) {
				// Most recently used last: the oldest entry is the first to go.
				this.counts.delete(id);
				this.counts.set(id, kept);
				out.set(id, kept.n);
				this.hits++;
			} else {
				if (kept) this.counts.delete(id);
				missing.push(id);
				this.misses++;
			}
		}
		if (missing.length === 0) return out;
		for (const id of missing) {
			const l = this.loading.get(id);
			if (l) l.readers++;
			else this.loading.set(id, { changed: false, readers: 1 });
		}
		try {
			const loaded = await this.load(missing);
			for (const id of missing) {
				const n = loaded.get(id) ?? 0;
				out.set(id, n);
				if (!this.loading.get(id)?.changed) this.keep(id, n);
			}
		} finally {
			for (const id of missing) {
				const l = this.loading.get(id);
				if (l && --l.readers === 0) this.loading.delete(id);
			}
		}
		return out;
	}

	/** These notifications were stored (unread): counts kept here move by them. */
	added(userIds: number[]): void {
		const by = new Map<number, number>();
		for (const id of userIds) by.set(id, (by.get(id) ?? 0) + 1);
		for (const [id, k] of by) {
			this.markChanged(id);
			const kept = this.counts.get(id);
			if (kept) kept.n += k;
		}
	}

	/** These users' notifications changed some other way: count them again next time. */
	forget(userIds: number[] | "all"): void {
		if (userIds === "all") {
			this.counts.clear();
			for (const l of this.loading.values()) l.changed = true;
			return;
		}
		for (const id of userIds) {
			this.markChanged(id);
			this.counts.delete(id);
		}
	}

	/** For the metrics and the tests: counts served from memory, and read from the store. */
	stats(): { hits: number; misses: number; size: number } {
		return { hits: this.hits, misses: this.misses, size: this.counts.size };
	}

	private markChanged(id: number): void {
		const l = this.loading.get(id);
		if (l) l.changed = true;
	}

	private keep(id: number, n: number): void {
		this.counts.delete(id);
		this.counts.set(id, { n, at: Date.now() });
		while (this.counts.size > this.options.max) {
			const oldest = this.counts.keys().next().value as number;
			this.counts.delete(oldest);
		}
	}
}
