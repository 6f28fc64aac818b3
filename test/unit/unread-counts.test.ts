import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { UnreadCounts } from "../../lib/unread-counts";

/** A store of unread counts the loader reads from, counting its reads. */
function fakeStore(initial: Record<number, number>) {
	const counts = new Map<number, number>(Object.entries(initial).map(([k, v]) => [Number(k), v]));
	const loads: number[][] = [];
	let gate: Promise<void> | null = null;
	return {
		counts,
		loads,
		hold() {
			let open!: () => void;
			gate = new Promise(r => (open = r));
			return () => {
				gate = null;
				open();
			};
		},
		load: async (ids: number[]) => {
			loads.push([...ids]);
			const snapshot = new Map(ids.map(id => [id, counts.get(id) ?? 0]));
			if (gate) await gate;
			return snapshot;
		},
	};
}

describe("UnreadCounts", () => {
	it("reads the missing users in one load, then serves them from memory", async () => {
		const store = fakeStore({ 1: 3, 2: 0 });
		const counts = new UnreadCounts(store.load);
		assert.deepEqual([...(await counts.get([1, 2, 1, 3]))], [[1, 3], [2, 0], [3, 0]]);
		assert.deepEqual(store.loads, [[1, 2, 3]]);
		await counts.get([2, 1]);
		assert.equal(store.loads.length, 1, "no second load");
		assert.deepEqual(counts.stats(), { hits: 2, misses: 3, size: 3 });
	});

	it("moves a kept count by the notifications stored, and leaves unknown users unknown", async () => {
		const store = fakeStore({ 1: 3 });
		const counts = new UnreadCounts(store.load);
		await counts.get([1]);
		counts.added([1, 1, 9]);
		assert.equal((await counts.get([1])).get(1), 5);
		assert.equal(store.loads.length, 1);
		store.counts.set(9, 4);
		assert.equal((await counts.get([9])).get(9), 4, "a user never read is read from the store, not guessed");
	});

	it("counts again after a forget, one user or all", async () => {
		const store = fakeStore({ 1: 3, 2: 1 });
		const counts = new UnreadCounts(store.load);
		await counts.get([1, 2]);
		store.counts.set(1, 0);
		counts.forget([1]);
		assert.deepEqual([...(await counts.get([1, 2]))], [[2, 1], [1, 0]]);
		assert.deepEqual(store.loads.at(-1), [1]);
		store.counts.set(2, 7);
		counts.forget("all");
		assert.equal((await counts.get([2])).get(2), 7);
	});

	it("does not keep a count read while a change for that user came in", async () => {
		const store = fakeStore({ 1: 3 });
		const counts = new UnreadCounts(store.load);
		const release = store.hold();
		const reading = counts.get([1]);
		// Stored while the read was in flight: the read may or may not include it.
		store.counts.set(1, 4);
		counts.added([1]);
		release();
		assert.equal((await reading).get(1), 3, "the read answers what it read");
		assert.equal((await counts.get([1])).get(1), 4, "but it was not kept: the next get reads again");
		assert.equal(store.loads.length, 2);

		const release2 = store.hold();
		const reading2 = counts.get([2]);
		counts.forget([2]);
		release2();
		await reading2;
		await counts.get([2]);
		assert.equal(store.loads.length, 4, "a forget during a read: not kept either");
	});

	it("expires counts after their TTL and drops the least recently used past max", async () => {
		const store = fakeStore({ 1: 1, 2: 2, 3: 3 });
		const counts = new UnreadCounts(store.load, { max: 2, ttlMs: 50 });
		await counts.get([1]);
		await counts.get([2]);
		await counts.get([1]);
		await counts.get([3]);
		assert.equal(counts.stats().size, 2);
		await counts.get([1, 3]);
		assert.equal(store.loads.length, 3, "1 and 3 kept, 2 dropped");
		await new Promise(r => setTimeout(r, 60));
		await counts.get([1]);
		assert.equal(store.loads.length, 4, "expired: read again");
	});

	it("a failed load keeps nothing and leaves no read marked as under way", async () => {
		let fail = true;
		const counts = new UnreadCounts(async ids => {
			if (fail) throw new Error("store away");
			return new Map(ids.map(id => [id, 1]));
		});
		await assert.rejects(counts.get([1]), /store away/);
		fail = false;
		assert.equal((await counts.get([1])).get(1), 1);
		counts.added([1]);
		assert.equal((await counts.get([1])).get(1), 2, "kept after the good load, and moved");
	});
});
