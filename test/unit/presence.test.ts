import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ClusterPresence, presenceFor, viewOfFanout } from "../../lib/presence";
import { LocalPresence } from "../../lib/presence-local";

describe("LocalPresence (a gateway's side)", () => {
	it("sends a user's first socket and last socket only: a second tab, or one of three closed, is no change", () => {
		const local = new LocalPresence();
		local.opened(7, 1000);
		assert.deepEqual(local.take("gw")?.users, [[7, "active", 1000]]);
		local.opened(7, 1100);
		local.opened(7, 1200);
		local.closed(7, 1300);
		assert.equal(local.take("gw"), null, "3 tabs, one closed: nothing to say");
		local.closed(7, 1400);
		local.closed(7, 1500);
		assert.deepEqual(local.take("gw")?.users, [[7, "absent", 1500]]);
	});

	it("numbers its deltas and keeps a user's latest state of a batch", () => {
		const local = new LocalPresence();
		local.opened(1, 10);
		local.opened(2, 10);
		local.closed(1, 20);
		const first = local.take("gw")!;
		assert.equal(first.seq, 1);
		assert.equal(first.epoch, local.epoch);
		assert.deepEqual(first.users, [
			[1, "absent", 20],
			[2, "active", 10],
		]);
		local.closed(2, 30);
		assert.equal(local.take("gw")!.seq, 2);
		assert.equal(local.take("gw"), null);
	});

	it("goes idle after the away threshold without events, and active again on an event", () => {
		const local = new LocalPresence();
		local.opened(5, 0);
		local.take("gw");
		assert.equal(local.sweep(299_000, 300_000), false);
		assert.equal(local.touch(5, 100_000), false, "an event while active sends nothing");
		assert.equal(local.sweep(399_999, 300_000), false);
		assert.equal(local.sweep(400_000, 300_000), true);
		assert.equal(local.state(5), "idle");
		assert.deepEqual(local.take("gw")?.users, [[5, "idle", 100_000]]);
		assert.equal(local.sweep(500_000, 300_000), false, "idle once");
		assert.equal(local.touch(5, 500_001), true);
		assert.deepEqual(local.take("gw")?.users, [[5, "active", 500_001]]);
		assert.equal(local.touch(999, 1), false, "no socket here: ignored");
	});

	it("counts subscriptions per (target, subscriber): the first and the last one are sent; a flip and back cancels", () => {
		const local = new LocalPresence();
		local.watch(10, 1);
		local.watch(10, 1);
		local.watch(11, 1);
		assert.deepEqual(local.take("gw")?.watch, [
			[10, 1],
			[11, 1],
		]);
		local.unwatch(10, 1);
		assert.equal(local.take("gw"), null, "another socket of user 1 still watches 10");
		local.unwatch(10, 1);
		local.unwatch(10, 1);
		assert.deepEqual(local.take("gw")?.unwatch, [[10, 1]]);
		local.unwatch(11, 1);
		local.watch(11, 1);
		assert.equal(local.take("gw"), null, "dropped and taken again in one batch: nothing changed");
	});

	it("answers its full state with the number of the last delta sent", () => {
		const local = new LocalPresence();
		local.opened(1, 5);
		local.watch(2, 1);
		local.take("gw");
		local.opened(3, 6);
		const state = local.snapshot();
		assert.equal(state.seq, 1);
		assert.deepEqual(state.users, [
			[1, "active", 5],
			[3, "active", 6],
		]);
		assert.deepEqual(state.watches, [[2, 1]]);
		assert.deepEqual(local.resyncRequest("gw"), { gateway: "gw", epoch: local.epoch, seq: 1, resync: true });
	});
});

describe("ClusterPresence (a users node's view)", () => {
	it("derives online / away / offline from every gateway's state", () => {
		const cluster = new ClusterPresence();
		assert.deepEqual(cluster.derived(1), { status: "offline", at: null });
		assert.equal(cluster.setUser("a", [1, "active", 100], 1000), true);
		assert.equal(cluster.setUser("b", [1, "idle", 50], 1000), false, "still online: active on a");
		assert.deepEqual(cluster.derived(1), { status: "online", at: null });
		assert.equal(cluster.setUser("a", [1, "idle", 200], 1000), true);
		assert.deepEqual(cluster.derived(1), { status: "away", at: 200 }, "away since its last event anywhere");
		assert.equal(cluster.setUser("b", [1, "absent", 300], 1000), false, "the away time stays the one of a");
		assert.equal(cluster.setUser("a", [1, "absent", 400], 1000), true);
		assert.deepEqual(cluster.derived(1), { status: "offline", at: 400 });
		assert.equal(cluster.setUser("a", [1, "absent", 300], 1000), false, "absent again, told before: no change");
		// A socket opened and closed within one batch of a gateway: only its absence is told, with a later last seen.
		assert.equal(cluster.setUser("b", [1, "absent", 500], 1000), true);
		assert.deepEqual(cluster.derived(1), { status: "offline", at: 500 });
	});

	it("caps a gateway's clock at its own and drops a gateway's users and subscriptions when it leaves", () => {
		const cluster = new ClusterPresence();
		cluster.setUser("a", [1, "active", 9_999_999], 1000);
		cluster.setUser("b", [1, "active", 10], 1000);
		cluster.setUser("a", [2, "active", 10], 1000);
		cluster.watch("a", [3, 2]);
		assert.deepEqual(cluster.dropGateway("a", 2000), [2], "user 1 is still on b");
		assert.deepEqual(cluster.derived(2), { status: "offline", at: 2000 });
		assert.equal(cluster.watchersOf(3).size, 0);
		assert.deepEqual(cluster.gatewaysOf(1), ["b"]);
	});

	it("replaces a gateway's state as a whole, and tells which users changed", () => {
		const cluster = new ClusterPresence();
		cluster.apply({ gateway: "a", users: [[1, "active", 1], [2, "active", 1]], watch: [[9, 1]] }, 10);
		const changed = cluster.replaceGateway("a", { users: [[2, "active", 1], [3, "idle", 2]], watches: [[8, 2]] }, 20);
		assert.deepEqual(changed.sort(), [1, 3]);
		assert.deepEqual([...cluster.watchersOf(8)], [["a", new Set([2])]]);
		assert.equal(cluster.watchersOf(9).size, 0);
		cluster.unwatch("a", [8, 2]);
		assert.equal(cluster.stats().watchedTargets, 0);
	});

	it("forgets old offline times (the profile has them by then)", () => {
		const cluster = new ClusterPresence();
		cluster.setUser("a", [1, "active", 1], 10);
		cluster.setUser("a", [1, "absent", 5], 10);
		cluster.pruneOfflineTimes(4);
		assert.equal(cluster.derived(1).at, 5);
		cluster.pruneOfflineTimes(6);
		assert.equal(cluster.derived(1).at, null);
	});
});

describe("presence privacy", () => {
	const target = { id: 1, status: "away" as const, lastSeenAt: "2026-01-01T00:00:00.000Z", hidesLastSeen: false };
	it("a block either way: offline with no last seen; hiding on either side: no last seen; the user itself sees all", () => {
		assert.deepEqual(presenceFor(target, { id: 2, hidesLastSeen: false }, false), { userId: 1, status: "away", last_seen_at: target.lastSeenAt });
		assert.deepEqual(presenceFor(target, { id: 2, hidesLastSeen: false }, true), { userId: 1, status: "offline", last_seen_at: null });
		assert.deepEqual(presenceFor(target, { id: 2, hidesLastSeen: true }, false), { userId: 1, status: "away", last_seen_at: null });
		assert.deepEqual(presenceFor({ ...target, hidesLastSeen: true }, { id: 2, hidesLastSeen: false }, false), { userId: 1, status: "away", last_seen_at: null });
		assert.deepEqual(presenceFor({ ...target, hidesLastSeen: true }, null, false).last_seen_at, null);
		assert.deepEqual(presenceFor({ ...target, hidesLastSeen: true }, { id: 1, hidesLastSeen: true }, false).last_seen_at, target.lastSeenAt);
	});

	it("a fanned-out change, per receiver", () => {
		const fanout = { userId: 1, status: "offline" as const, last_seen_at: "2026-01-01T00:00:00.000Z", offlineFor: [3], hideSeenFor: [4] };
		assert.deepEqual(viewOfFanout(fanout, 2), { userId: 1, status: "offline", last_seen_at: fanout.last_seen_at });
		assert.deepEqual(viewOfFanout({ ...fanout, status: "online", last_seen_at: null }, 3), { userId: 1, status: "offline", last_seen_at: null });
		assert.deepEqual(viewOfFanout(fanout, 4), { userId: 1, status: "offline", last_seen_at: null });
	});
});
