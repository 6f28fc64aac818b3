/**
 * Group commit for store writes: work added while a batch is being written waits and goes in the
 * next one, so a burst costs one store round trip per batch instead of one per item. A batch
 * starts `lingerMs` after its first item (0: the next turn of the event loop), so work that is
 * not urgent can wait a few milliseconds for company. Each add() settles with its batch.
 */
export class Batcher<T, R = void> {
	private pending: { item: T; resolve: (r: R) => void; reject: (err: unknown) => void }[] = [];
	private running = false;

	/** `write` gets the items in the order they were added and returns one result per item. */
	constructor(
		private readonly write: (items: T[]) => Promise<R[]>,
		private readonly options: { maxBatch?: number; lingerMs?: number } = {},
	) {}

	add(item: T): Promise<R> {
		return new Promise<R>((resolve, reject) => {
			this.pending.push({ item, resolve, reject });
			if (this.running) return;
			this.running = true;
			const linger = this.options.lingerMs ?? 0;
			if (linger > 0) setTimeout(() => void this.drain(), linger);
			else setImmediate(() => void this.drain());
		});
	}

	/** Items waiting or being written. */
	get size(): number {
		return this.pending.length;
	}

	private async drain(): Promise<void> {
		while (this.pending.length > 0) {
			const batch = this.pending.splice(0, this.options.maxBatch ?? 500);
			try {
				const results = await this.write(batch.map(b => b.item));
				batch.forEach((b, i) => b.resolve(results[i]));
			} catch (err) {
				for (const b of batch) b.reject(err);
			}
		}
		this.running = false;
	}
}
