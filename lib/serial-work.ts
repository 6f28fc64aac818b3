/**
 * Work on one key runs one at a time in this process, in the order it was queued: a local race
 * (two sends taking the same seq, two writes of one document on a store that rewrites whole
 * documents) becomes a queue. Work on several keys waits for all of them; it waits only on work
 * queued before it, so it can never deadlock.
 */
export class SerialWork<K = string> {
	private readonly tails = new Map<K, Promise<unknown>>();

	run<T>(keys: K | K[], work: () => Promise<T>): Promise<T> {
		const list = Array.isArray(keys) ? keys : [keys];
		const prev = Promise.all(list.map(key => this.tails.get(key)));
		const run = prev.then(work, work);
		const tail = run.catch(() => undefined);
		for (const key of list) this.tails.set(key, tail);
		void tail.then(() => {
			for (const key of list) if (this.tails.get(key) === tail) this.tails.delete(key);
		});
		return run;
	}

	/** Keys with work queued or running. */
	get size(): number {
		return this.tails.size;
	}
}
