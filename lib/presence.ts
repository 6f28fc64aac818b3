/**
 * Presence across the cluster, with a cost that grows with the changes and the subscribers, not
 * with users × nodes (no periodic snapshots):
 *
 * - Each gateway keeps its users' LOCAL state (absent / active / idle: no event for
 *   PRESENCE_AWAY_SECONDS) and its sockets' subscriptions (lib/presence-local.ts). Only a change
 *   of either is sent, batched, as a numbered PresenceDelta to every users node.
 * - Every users node keeps the cluster's view (ClusterPresence below): per user, its state on each
 *   gateway; the status is derived (online if active on any gateway, away if idle on all, else
 *   offline). A gateway that leaves (`$node.disconnected`, 10 to 18 s after a SIGKILL) takes its users'
 *   entries with it. A users node pulls a gateway's full state only when it meets it, when its
 *   numbering has a gap, or after a transporter reconnect: never periodically.
 * - One users node (the oldest) fans a change of X out: to the gateways with subscribers of X and
 *   to those holding X's private-chat partners, with the receivers whose view differs (blocks,
 *   hidden last seen) listed, so that each gateway gives each socket its own view.
 */
import type { PresenceEntry, PresenceStatus } from "./socket-events";

/** Most ids in one presence:subscribe (the contract's limit). */
export const MAX_SUBSCRIBE_IDS = 200;
/** Most users one socket may be subscribed to at once; past that, VALIDATION_ERROR. */
export const MAX_SUBSCRIPTIONS_PER_SOCKET = 1000;
/** Gateway changes wait this long for company before they are sent (one message per batch and users node). */
export const PRESENCE_BATCH_MS = 100;
/** Changes of the cluster's presence wait this long on the fanning users node, likewise. */
export const FANOUT_BATCH_MS = 50;
/** A users node remembers a user's last offline time this long (after that its profile, read since the UPDATE, has it). */
export const OFFLINE_MEMORY_MS = 5 * 60_000;

/** A user's state on one gateway node. */
export type LocalState = "active" | "idle" | "absent";
/** One user's change on a gateway: its state and when (active/idle: its last event; absent: when its last socket closed), ms. */
export type UserChange = [userId: number, state: LocalState, at: number];
/** A subscriber (user id) has a socket on the gateway subscribed to the target. */
export type WatchPair = [target: number, subscriber: number];

/** A gateway's changes since its previous delta, numbered per gateway incarnation (epoch). */
export interface PresenceDelta {
	gateway: string;
	epoch: string;
	seq: number;
	users?: UserChange[];
	watch?: WatchPair[];
	unwatch?: WatchPair[];
	/** The gateway may have lost deltas (its transporter reconnected): pull its full state. */
	resync?: boolean;
}

/** A gateway's full state (`api.presenceState`): what a users node pulls when it meets the gateway. */
export interface GatewayPresenceState {
	epoch: string;
	/** The last delta sent: later ones apply on top. */
	seq: number;
	users: UserChange[];
	watches: WatchPair[];
}

/** One change as a gateway delivers it: the common view, and the receivers who see another. */
export interface PresenceFanout extends PresenceEntry {
	/** Receivers with a block with the user, either way: `offline`, no last seen. */
	offlineFor?: number[];
	/** Receivers who hide their own last seen: no last seen. */
	hideSeenFor?: number[];
	/** The user's private-chat partners with sockets on this gateway: they get it without subscribing. */
	partners?: number[];
}

export interface PresencePush {
	entries: PresenceFanout[];
}

/** What a users node knows of a user's presence: `at` is the last event while away, the last socket's close while offline (when known here). */
export interface DerivedPresence {
	status: PresenceStatus;
	at: number | null;
}

const sameDerived = (a: DerivedPresence, b: DerivedPresence) => a.status === b.status && a.at === b.at;

/** The view one receiver gets of a fanned-out change. */
export function viewOfFanout(fanout: PresenceFanout, viewerId: number): PresenceEntry {
	const entry = { userId: fanout.userId, status: fanout.status, last_seen_at: fanout.last_seen_at };
	if (viewerId === fanout.userId) return entry;
	if (fanout.offlineFor?.includes(viewerId)) return { userId: fanout.userId, status: "offline", last_seen_at: null };
	if (fanout.hideSeenFor?.includes(viewerId)) return { ...entry, last_seen_at: null };
	return entry;
}

/**
 * The privacy rules, for one viewer and one target: a block either way shows `offline` with no last
 * seen; either side hiding its last seen (`show_last_seen: false`) hides it. The user itself sees all.
 */
export function presenceFor(
	target: { id: number; status: PresenceStatus; lastSeenAt: string | null; hidesLastSeen: boolean },
	viewer: { id: number; hidesLastSeen: boolean } | null,
	blocked: boolean,
): PresenceEntry {
	if (viewer && viewer.id === target.id) return { userId: target.id, status: target.status, last_seen_at: target.lastSeenAt };
	if (blocked) return { userId: target.id, status: "offline", last_seen_at: null };
	const hidden = target.hidesLastSeen || !!viewer?.hidesLastSeen;
	return { userId: target.id, status: target.status, last_seen_at: hidden ? null : target.lastSeenAt };
}

interface OnGateway {
	idle: boolean;
	lastEventAt: number;
}

/** The cluster's presence on a users node: users by gateway, and who watches whom from where. */
export class ClusterPresence {
	private readonly byUser = new Map<number, Map<string, OnGateway>>();
	private readonly usersOn = new Map<string, Set<number>>();
	/** Recent offline transitions (user → when its last socket closed); older ones are in its profile. */
	private readonly offlineAt = new Map<number, number>();
	/** target → gateway → subscribing users there. */
	private readonly watchers = new Map<number, Map<string, Set<number>>>();
	/** gateway → targets watched there. */
	private readonly watchedOn = new Map<string, Set<number>>();

	derived(userId: number): DerivedPresence {
		const on = this.byUser.get(userId);
		if (!on || on.size === 0) return { status: "offline", at: this.offlineAt.get(userId) ?? null };
		let idle = true;
		let last = 0;
		for (const entry of on.values()) {
			if (!entry.idle) idle = false;
			if (entry.lastEventAt > last) last = entry.lastEventAt;
		}
		return idle ? { status: "away", at: last } : { status: "online", at: null };
	}

	/** Has a socket on some gateway (online or away). */
	isPresent(userId: number): boolean {
		return this.byUser.has(userId);
	}

	gatewaysOf(userId: number): string[] {
		return [...(this.byUser.get(userId)?.keys() ?? [])];
	}

	/** Gateways with subscribers of the user, and those subscribers. */
	watchersOf(userId: number): ReadonlyMap<string, ReadonlySet<number>> {
		return this.watchers.get(userId) ?? new Map();
	}

	gateways(): string[] {
		return [...new Set([...this.usersOn.keys(), ...this.watchedOn.keys()])];
	}

	/** One gateway's change of a user; true when the user's derived presence changed. */
	setUser(gateway: string, change: UserChange, now: number): boolean {
		const [userId, state] = change;
		const at = Math.min(change[2], now);
		const before = this.derived(userId);
		let on = this.byUser.get(userId);
		if (state === "absent") {
			if (!on) {
				// Connected and gone within one batch of its gateway: never online here, but seen later than we knew.
				if (at <= (this.offlineAt.get(userId) ?? 0)) return false;
				this.offlineAt.set(userId, at);
				return true;
			}
			if (!on.has(gateway)) return false;
			on.delete(gateway);
			this.usersOn.get(gateway)?.delete(userId);
			if (on.size === 0) {
				this.byUser.delete(userId);
				this.offlineAt.set(userId, at);
			}
		} else {
			if (!on) this.byUser.set(userId, (on = new Map()));
			on.set(gateway, { idle: state === "idle", lastEventAt: at });
			let users = this.usersOn.get(gateway);
			if (!users) this.usersOn.set(gateway, (users = new Set()));
			users.add(userId);
		}
		return !sameDerived(before, this.derived(userId));
	}

	watch(gateway: string, [target, subscriber]: WatchPair): void {
		let byGateway = this.watchers.get(target);
		if (!byGateway) this.watchers.set(target, (byGateway = new Map()));
		let subs = byGateway.get(gateway);
		if (!subs) byGateway.set(gateway, (subs = new Set()));
		subs.add(subscriber);
		let targets = this.watchedOn.get(gateway);
		if (!targets) this.watchedOn.set(gateway, (targets = new Set()));
		targets.add(target);
	}

	unwatch(gateway: string, [target, subscriber]: WatchPair): void {
		const byGateway = this.watchers.get(target);
		const subs = byGateway?.get(gateway);
		if (!byGateway || !subs) return;
		subs.delete(subscriber);
		if (subs.size > 0) return;
		byGateway.delete(gateway);
		if (byGateway.size === 0) this.watchers.delete(target);
		this.watchedOn.get(gateway)?.delete(target);
	}

	/** A gateway applied as a whole: its delta. Returns the users whose derived presence changed. */
	apply(delta: Pick<PresenceDelta, "gateway" | "users" | "watch" | "unwatch">, now: number): number[] {
		const changed: number[] = [];
		for (const change of delta.users ?? []) if (this.setUser(delta.gateway, change, now)) changed.push(change[0]);
		for (const pair of delta.watch ?? []) this.watch(delta.gateway, pair);
		for (const pair of delta.unwatch ?? []) this.unwatch(delta.gateway, pair);
		return changed;
	}

	/** A gateway that left: its users' entries and its subscriptions go. Returns the users whose presence changed. */
	dropGateway(gateway: string, now: number): number[] {
		const changed: number[] = [];
		for (const userId of [...(this.usersOn.get(gateway) ?? [])]) if (this.setUser(gateway, [userId, "absent", now], now)) changed.push(userId);
		this.usersOn.delete(gateway);
		this.dropWatchesOn(gateway);
		return changed;
	}

	/** A gateway's full state replaces what this node knew of it. Returns the users whose presence changed. */
	replaceGateway(gateway: string, state: Pick<GatewayPresenceState, "users" | "watches">, now: number): number[] {
		const changed = new Set<number>();
		const listed = new Set(state.users.map(u => u[0]));
		for (const userId of [...(this.usersOn.get(gateway) ?? [])]) {
			if (!listed.has(userId) && this.setUser(gateway, [userId, "absent", now], now)) changed.add(userId);
		}
		for (const change of state.users) if (this.setUser(gateway, change, now)) changed.add(change[0]);
		this.dropWatchesOn(gateway);
		for (const pair of state.watches) this.watch(gateway, pair);
		return [...changed];
	}

	/** Every subscription held through this gateway goes. */
	private dropWatchesOn(gateway: string): void {
		for (const target of this.watchedOn.get(gateway) ?? []) {
			const byGateway = this.watchers.get(target);
			byGateway?.delete(gateway);
			if (byGateway?.size === 0) this.watchers.delete(target);
		}
		this.watchedOn.delete(gateway);
	}

	/** Forget offline times older than `before` (their profiles have them by now). */
	pruneOfflineTimes(before: number): void {
		for (const [userId, at] of this.offlineAt) if (at < before) this.offlineAt.delete(userId);
	}

	/** Sizes, for tests and logs. */
	stats(): { users: number; gateways: number; watchedTargets: number; offlineTimes: number } {
		return { users: this.byUser.size, gateways: this.gateways().length, watchedTargets: this.watchers.size, offlineTimes: this.offlineAt.size };
	}
}
