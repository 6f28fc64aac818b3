/**
 * Presence, as the gateway sees it: the open /chat sockets per user on this node. The users
 * service is told who is online here by a snapshot on every first-socket and last-socket change
 * and every PRESENCE_INTERVAL_MS (so a missed one heals); a node that falls silent counts as gone.
 * The sockets mixin tells this one when a /chat socket of a user opens (socketOpened).
 */
import type { Service, ServiceSchema } from "moleculer";
import type { Socket } from "socket.io";
import { EVENTS, PRESENCE_INTERVAL_MS } from "../lib/constants";
import { broadcastEvent } from "../lib/contracts";

export interface GatewayPresenceThis extends Service {
	/** Open /chat sockets per user on this node. */
	presence: Map<number, number>;
	presenceTimer: NodeJS.Timeout | null;
	announcePresence(): void;
	/** A /chat socket of this user is open: counted until it disconnects. */
	presenceSocketOpened(userId: number, socket: Socket): void;
}

export const GatewayPresenceMixin = {
	methods: {
		/** Who is online on this node, to every users service (a snapshot, so a missed one heals). */
		announcePresence(this: GatewayPresenceThis) {
			broadcastEvent(this.broker, EVENTS.presenceSnapshot, { nodeID: this.broker.nodeID, userIds: [...this.presence.keys()] }, ["users"]).catch(() => undefined);
		},

		presenceSocketOpened(this: GatewayPresenceThis, userId: number, socket: Socket) {
			const before = this.presence.get(userId) ?? 0;
			this.presence.set(userId, before + 1);
			if (before === 0) this.announcePresence();
			socket.on("disconnect", () => {
				const left = (this.presence.get(userId) ?? 1) - 1;
				if (left > 0) return void this.presence.set(userId, left);
				this.presence.delete(userId);
				this.announcePresence();
			});
		},
	},

	created(this: GatewayPresenceThis) {
		this.presence = new Map();
		this.presenceTimer = null;
	},

	started(this: GatewayPresenceThis) {
		this.presenceTimer = setInterval(() => this.announcePresence(), PRESENCE_INTERVAL_MS);
		this.presenceTimer.unref();
	},

	stopped(this: GatewayPresenceThis) {
		if (this.presenceTimer) clearInterval(this.presenceTimer);
		// Leaving: nobody is online here any more.
		this.presence.clear();
		this.announcePresence();
	},
} as unknown as Partial<ServiceSchema>;
