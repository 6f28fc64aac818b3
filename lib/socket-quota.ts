/**
 * The cap on a user's sockets per namespace across every gateway node (REDIS_URL set).
 *
 * Each gateway caps the sockets it holds itself (socket-sessions mixin); with Redis it also
 * records each socket in a sorted set per (namespace, user), scored by connect time:
 * `parley:<NAMESPACE>:sockets:<nsp>:<userId>` → `<nodeID> <socketId>`. On a connect the gateway
 * adds its socket, reads the set, drops the entries of gateways that are gone (a killed node never
 * removed its own), and, when more than `max` remain, names the oldest ones to end, wherever they
 * are. Two gateways that connect at once read the same order and pick the same victims.
 *
 * Redis away: each node keeps its own cap, and nothing is refused.
 */
import type { Redis } from "ioredis";

export interface SocketRef {
	nodeID: string;
	socketId: string;
}

/** Kept a week after the user's last connect, so the entries of a killed node do not stay for ever. */
const KEY_TTL_SECONDS = 7 * 24 * 3600;

const encode = (ref: SocketRef) => `${ref.nodeID} ${ref.socketId}`;
function decode(member: string): SocketRef {
	const space = member.lastIndexOf(" ");
	return { nodeID: member.slice(0, space), socketId: member.slice(space + 1) };
}

export class SocketQuota {
	constructor(
		private readonly redis: Redis,
		private readonly prefix: string,
		readonly max: number,
	) {}

	private key(nsp: string, userId: number): string {
		return `${this.prefix}:sockets:${nsp}:${userId}`;
	}

	/**
	 * Records `ref` and answers the sockets (on any node) that must end so that the user holds at
	 * most `max` here. `isLive` says whether a recorded socket still exists (its node is a live
	 * gateway, or, for this node, the socket is still connected).
	 */
	async add(nsp: string, userId: number, ref: SocketRef, isLive: (ref: SocketRef) => boolean): Promise<SocketRef[]> {
		const key = this.key(nsp, userId);
		const replies = await this.redis
			.multi()
			.zadd(key, Date.now(), encode(ref))
			.expire(key, KEY_TTL_SECONDS)
			.zrange(key, 0, -1)
			.exec();
		const members = (replies?.[2]?.[1] as string[] | undefined) ?? [];
		const stale: string[] = [];
		const live: string[] = [];
		for (const member of members) (isLive(decode(member)) ? live : stale).push(member);
		// Oldest first (the set's order): those beyond the newest `max` go.
		const evicted = live.slice(0, Math.max(0, live.length - this.max));
		const gone = [...stale, ...evicted];
		if (gone.length > 0) await this.redis.zrem(key, ...gone);
		return evicted.map(decode);
	}

	async remove(nsp: string, userId: number, ref: SocketRef): Promise<void> {
		await this.redis.zrem(this.key(nsp, userId), encode(ref));
	}
}
