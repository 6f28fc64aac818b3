/**
 * A gateway node's side of presence (lib/presence.ts): its users' local state and its sockets'
 * subscriptions, and the changes not yet sent. Pure bookkeeping: the gateway mixin
 * (mixins/gateway-presence.mixin.ts) owns the sockets, the timers and the messages.
 *
 * - A user's local state: absent (no /chat socket here), active, or idle (no event from any of its
 *   sockets here for the away threshold). Only transitions are queued: a second tab, or a tab
 *   closed while another stays, changes nothing.
 * - Subscriptions count per (target, subscribing user): the users nodes hear of a pair when its
 *   first socket here subscribes and when its last one stops.
 * - Queued changes coalesce until take(): a user's latest state wins, and a pair subscribed and
 *   dropped again in the same batch is not sent at all.
 */
import crypto from "node:crypto";
import type { GatewayPresenceState, LocalState, PresenceDelta, UserChange, WatchPair } from "./presence";

interface LocalUser {
	sockets: number;
	lastEventAt: number;
	idle: boolean;
}

export class LocalPresence {
	/** A new one per gateway process: a users node that sees another epoch pulls the full state. */
	readonly epoch = crypto.randomUUID();
	private seq = 0;
	private readonly users = new Map<number, LocalUser>();
	/** target → subscribing user → its sockets here subscribed to the target. */
	private readonly pairs = new Map<number, Map<number, number>>();
	private readonly pendingUsers = new Map<number, UserChange>();
	/** `${target}:${subscriber}` → true: watch, false: unwatch (a second flip cancels the first). */
	private readonly pendingPairs = new Map<string, boolean>();

	/** A /chat socket of the user opened here. */
	opened(userId: number, now: number): void {
		const user = this.users.get(userId);
		if (user) {
			user.sockets++;
			this.touch(userId, now);
			return;
		}
		this.users.set(userId, { sockets: 1, lastEventAt: now, idle: false });
		this.pendingUsers.set(userId, [userId, "active", now]);
	}

	/** One of its /chat sockets here closed. */
	closed(userId: number, now: number): void {
		const user = this.users.get(userId);
		if (!user) return;
		if (--user.sockets > 0) return;
		this.users.delete(userId);
		this.pendingUsers.set(userId, [userId, "absent", now]);
	}

	/**
	 * An event from one of the user's sockets (the hot path: a map lookup and a field set). True
	 * when it changed the user's state (idle → active), which then waits to be sent.
	 */
	touch(userId: number, now: number): boolean {
		const user = this.users.get(userId);
		if (!user) return false;
		user.lastEventAt = now;
		if (!user.idle) return false;
		user.idle = false;
		this.pendingUsers.set(userId, [userId, "active", now]);
		return true;
	}

	/** Users with no event for `awayMs` become idle; true when any did. */
	sweep(now: number, awayMs: number): boolean {
		let any = false;
		const before = now - awayMs;
		for (const [userId, user] of this.users) {
			if (user.idle || user.lastEventAt > before) continue;
			user.idle = true;
			this.pendingUsers.set(userId, [userId, "idle", user.lastEventAt]);
			any = true;
		}
		return any;
	}

	state(userId: number): LocalState {
		const user = this.users.get(userId);
		return !user ? "absent" : user.idle ? "idle" : "active";
	}

	/** A socket of `subscriber` subscribed to `target` (each socket counts once per target: the caller keeps its set). */
	watch(target: number, subscriber: number): void {
		let subs = this.pairs.get(target);
		if (!subs) this.pairs.set(target, (subs = new Map()));
		const count = (subs.get(subscriber) ?? 0) + 1;
		subs.set(subscriber, count);
		if (count === 1) this.flipPair(target, subscriber, true);
	}

	unwatch(target: number, subscriber: number): void {
		const subs = this.pairs.get(target);
		const count = subs?.get(subscriber);
		if (!subs || !count) return;
		if (count > 1) return void subs.set(subscriber, count - 1);
		subs.delete(subscriber);
		if (subs.size === 0) this.pairs.delete(target);
		this.flipPair(target, subscriber, false);
	}

	private flipPair(target: number, subscriber: number, watching: boolean): void {
		const key = `${target}:${subscriber}`;
		// Flips alternate: a pending flip and this one cancel out (the users nodes already have the state).
		if (this.pendingPairs.has(key)) this.pendingPairs.delete(key);
		else this.pendingPairs.set(key, watching);
	}

	get hasPending(): boolean {
		return this.pendingUsers.size > 0 || this.pendingPairs.size > 0;
	}

	/** The queued changes as the next numbered delta, or null when there are none. */
	take(gateway: string): PresenceDelta | null {
		if (!this.hasPending) return null;
		const delta: PresenceDelta = { gateway, epoch: this.epoch, seq: ++this.seq };
		if (this.pendingUsers.size > 0) delta.users = [...this.pendingUsers.values()];
		const watch: WatchPair[] = [];
		const unwatch: WatchPair[] = [];
		for (const [key, watching] of this.pendingPairs) {
			const [target, subscriber] = key.split(":").map(Number) as WatchPair;
			(watching ? watch : unwatch).push([target, subscriber]);
		}
		if (watch.length > 0) delta.watch = watch;
		if (unwatch.length > 0) delta.unwatch = unwatch;
		this.pendingUsers.clear();
		this.pendingPairs.clear();
		return delta;
	}

	/** Asks the users nodes to pull the full state (the numbering does not move). */
	resyncRequest(gateway: string): PresenceDelta {
		return { gateway, epoch: this.epoch, seq: this.seq, resync: true };
	}

	/**
	 * The full state, numbered with the last delta taken: changes still queued are in it already,
	 * and applying them again on top (they come with a later number) changes nothing.
	 */
	snapshot(): GatewayPresenceState {
		const users: UserChange[] = [];
		for (const [userId, user] of this.users) users.push([userId, user.idle ? "idle" : "active", user.lastEventAt]);
		const watches: WatchPair[] = [];
		for (const [target, subs] of this.pairs) for (const subscriber of subs.keys()) watches.push([target, subscriber]);
		return { epoch: this.epoch, seq: this.seq, users, watches };
	}
}
