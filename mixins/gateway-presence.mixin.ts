/**
 * Presence, as a gateway node sees it (the design: lib/presence.ts).
 *
 * - Its users' local state and its sockets' subscriptions (lib/presence-local.ts). A change (first
 *   /chat socket, last one gone, no event for PRESENCE_AWAY_SECONDS, an event again) is sent,
 *   batched, to every users node as a numbered delta; nothing is sent while nothing changes.
 * - `presence:subscribe` / `presence:unsubscribe` run here, on the node holding the socket
 *   (subscriptions are the socket's, and end with it); the users nodes hear of the first
 *   subscriber of a user here and of the last one gone.
 * - `presence.push` from the fanning users node: each change to the sockets subscribed to that
 *   user and to its private-chat partners' sockets, once each, in each receiver's view.
 * - `api.presenceState`: the full state, pulled by a users node when it meets this node.
 *
 * The sockets mixin calls presenceSocketOpened for each /chat socket and presenceTouch for each
 * event a client sends.
 */
import type { Context, Service, ServiceSchema } from "moleculer";
import type { Socket } from "socket.io";
import { arrayOf, schema } from "../lib/api-schemas";
import { config } from "../lib/config";
import { EVENTS } from "../lib/constants";
import { validationError } from "../lib/errors";
import type { CallMeta } from "../lib/meta";
import { type GatewayPresenceState, MAX_SUBSCRIBE_IDS, MAX_SUBSCRIPTIONS_PER_SOCKET, PRESENCE_BATCH_MS, type PresenceDelta, type PresencePush, viewOfFanout } from "../lib/presence";
import { LocalPresence } from "../lib/presence-local";
import type { PresenceEntry } from "../lib/socket-events";
import { userOf } from "../middlewares/authorize.middleware";

/** How often idle users are looked for: a quarter of the away threshold, between 250 ms and 5 s. */
const sweepEveryMs = (awayMs: number) => Math.min(5_000, Math.max(250, Math.floor(awayMs / 4)));

export interface GatewayPresenceThis extends Service {
	presenceLocal: LocalPresence;
	/** target user → the sockets here subscribed to it. */
	presenceSubscribers: Map<number, Set<Socket>>;
	presenceFlushTimer: NodeJS.Timeout | null;
	presenceSweepTimer: NodeJS.Timeout | null;
	/** Whether the transporter has connected once (a later connect is a reconnect: deltas may be lost). */
	presenceConnectedOnce: boolean;
	io: import("socket.io").Server;
	socketsByUser: Map<string, Map<number, Set<Socket>>>;
	/** A /chat socket of this user is open: counted until it disconnects. */
	presenceSocketOpened(userId: number, socket: Socket): void;
	/** An event from a socket of this user (the hot path). */
	presenceTouch(userId: number): void;
	presenceSchedule(): void;
	presenceFlush(): void;
	presenceSend(delta: PresenceDelta): void;
	presenceSweep(): void;
	presenceSubscribe(socket: Socket, userIds: number[]): void;
	presenceUnsubscribe(socket: Socket, userIds: number[]): void;
	presenceDeliver(push: PresencePush): void;
	presenceSocketOf(ctx: Context<unknown, CallMeta>): Socket;
}

/** The targets a socket is subscribed to. */
const subsOf = (socket: Socket): Set<number> => ((socket.data as { presenceSubs?: Set<number> }).presenceSubs ??= new Set());

const userIdsRule = { type: "array", max: MAX_SUBSCRIBE_IDS, items: { type: "number", integer: true, positive: true } } as const;

export const GatewayPresenceMixin = {
	actions: {
		presenceSubscribe: {
			socket: { namespace: "/chat", event: "presence:subscribe" },
			openapi: {
				tag: "Users",
				summary: "Subscribe this socket to users' presence",
				description:
					`Answers each user's presence as the caller may see it (unknown ids: \`offline\`, no last seen), and from then on this socket gets \`presence:changed\` for them until it unsubscribes or disconnects. ` +
					`At most ${MAX_SUBSCRIBE_IDS} ids a call and ${MAX_SUBSCRIPTIONS_PER_SOCKET} subscriptions a socket (\`VALIDATION_ERROR\` beyond). ` +
					"Private-chat partners' presence comes without subscribing.",
				params: { userIds: `The users (at most ${MAX_SUBSCRIBE_IDS}); repeated ids count once.` },
				ack: arrayOf(schema("Presence")),
			},
			params: { $$strict: "remove", userIds: userIdsRule },
			async handler(this: GatewayPresenceThis, ctx: Context<{ userIds: number[] }, CallMeta>): Promise<PresenceEntry[]> {
				const me = userOf(ctx);
				const socket = this.presenceSocketOf(ctx);
				const ids = [...new Set(ctx.params.userIds)];
				const subs = subsOf(socket);
				const adding = ids.filter(id => !subs.has(id)).length;
				if (subs.size + adding > MAX_SUBSCRIPTIONS_PER_SOCKET) {
					throw validationError(`A socket may subscribe to at most ${MAX_SUBSCRIPTIONS_PER_SOCKET} users`, [
						{ field: "userIds", type: "arrayMax", message: `This socket has ${subs.size} subscriptions; at most ${MAX_SUBSCRIPTIONS_PER_SOCKET}`, expected: MAX_SUBSCRIPTIONS_PER_SOCKET },
					]);
				}
				if (ids.length === 0) return [];
				this.presenceSubscribe(socket, ids);
				// The users nodes hear of the subscription before the state is read: a change from now on reaches the socket.
				this.presenceFlush();
				return (await ctx.call("users.presenceOf", { viewerId: me.id, ids })) as PresenceEntry[];
			},
		},

		presenceUnsubscribe: {
			socket: { namespace: "/chat", event: "presence:unsubscribe", ack: "none" },
			openapi: {
				tag: "Users",
				summary: "Stop this socket's presence subscriptions to these users",
				description: "Ids the socket is not subscribed to are ignored. A private-chat partner's presence still comes.",
				params: { userIds: `The users (at most ${MAX_SUBSCRIBE_IDS}).` },
			},
			params: { $$strict: "remove", userIds: userIdsRule },
			handler(this: GatewayPresenceThis, ctx: Context<{ userIds: number[] }, CallMeta>) {
				userOf(ctx);
				this.presenceUnsubscribe(this.presenceSocketOf(ctx), ctx.params.userIds);
				return null;
			},
		},

		/** This node's full presence state: a users node pulls it when it meets this node (nodes only, never a client). */
		presenceState: {
			visibility: "public",
			handler(this: GatewayPresenceThis): GatewayPresenceState {
				return this.presenceLocal.snapshot();
			},
		},
	},

	events: {
		/** Changes for this node's sockets, from the users node that fans them out. */
		[EVENTS.presencePush](this: GatewayPresenceThis, ctx: Context<PresencePush>) {
			this.presenceDeliver(ctx.params);
		},
		/** After a reconnect, deltas sent meanwhile may be lost: the users nodes pull the full state. */
		"$transporter.connected"(this: GatewayPresenceThis) {
			if (this.presenceConnectedOnce) this.presenceSend(this.presenceLocal.resyncRequest(this.broker.nodeID));
			this.presenceConnectedOnce = true;
		},
	},

	methods: {
		presenceSocketOpened(this: GatewayPresenceThis, userId: number, socket: Socket) {
			this.presenceLocal.opened(userId, Date.now());
			this.presenceSchedule();
			socket.once("disconnect", () => {
				this.presenceUnsubscribe(socket, [...subsOf(socket)]);
				this.presenceLocal.closed(userId, Date.now());
				this.presenceSchedule();
			});
		},

		presenceTouch(this: GatewayPresenceThis, userId: number) {
			if (this.presenceLocal.touch(userId, Date.now())) this.presenceSchedule();
		},

		presenceSchedule(this: GatewayPresenceThis) {
			if (this.presenceFlushTimer || !this.presenceLocal.hasPending) return;
			this.presenceFlushTimer = setTimeout(() => this.presenceFlush(), PRESENCE_BATCH_MS);
		},

		presenceFlush(this: GatewayPresenceThis) {
			if (this.presenceFlushTimer) clearTimeout(this.presenceFlushTimer);
			this.presenceFlushTimer = null;
			const delta = this.presenceLocal.take(this.broker.nodeID);
			if (delta) this.presenceSend(delta);
		},

		presenceSend(this: GatewayPresenceThis, delta: PresenceDelta) {
			// One event per users node. One that misses it sees a gap in the numbering and pulls the full state.
			this.broker.broadcast(EVENTS.presenceDelta, delta, ["users"]).catch((err: Error) => this.logger.warn(`Presence change #${delta.seq} not sent: ${err.message}`));
		},

		presenceSweep(this: GatewayPresenceThis) {
			if (this.presenceLocal.sweep(Date.now(), config.presenceAwaySeconds * 1000)) this.presenceSchedule();
		},

		presenceSubscribe(this: GatewayPresenceThis, socket: Socket, userIds: number[]) {
			const subs = subsOf(socket);
			const subscriber = (socket.data.user as { id: number }).id;
			for (const target of userIds) {
				if (subs.has(target)) continue;
				subs.add(target);
				let sockets = this.presenceSubscribers.get(target);
				if (!sockets) this.presenceSubscribers.set(target, (sockets = new Set()));
				sockets.add(socket);
				this.presenceLocal.watch(target, subscriber);
			}
			this.presenceSchedule();
		},

		presenceUnsubscribe(this: GatewayPresenceThis, socket: Socket, userIds: number[]) {
			const subs = subsOf(socket);
			const subscriber = (socket.data.user as { id: number }).id;
			for (const target of userIds) {
				if (!subs.delete(target)) continue;
				const sockets = this.presenceSubscribers.get(target);
				sockets?.delete(socket);
				if (sockets?.size === 0) this.presenceSubscribers.delete(target);
				this.presenceLocal.unwatch(target, subscriber);
			}
			this.presenceSchedule();
		},

		presenceDeliver(this: GatewayPresenceThis, push: PresencePush) {
			if (!this.io) return;
			const partnerSockets = this.socketsByUser.get("/chat");
			for (const fanout of push.entries) {
				// A socket both subscribed and a partner's gets it once.
				const reached = new Set<Socket>(this.presenceSubscribers.get(fanout.userId) ?? []);
				for (const partner of fanout.partners ?? []) for (const socket of partnerSockets?.get(partner) ?? []) reached.add(socket);
				for (const socket of reached) {
					const viewer = (socket.data.user as { id: number } | undefined)?.id;
					if (viewer !== undefined && socket.connected) socket.emit("presence:changed", viewOfFanout(fanout, viewer));
				}
			}
		},

		/** The /chat socket a presence event came from: subscriptions are a socket's own. */
		presenceSocketOf(this: GatewayPresenceThis, ctx: Context<unknown, CallMeta>): Socket {
			const me = userOf(ctx);
			const socketId = (ctx.meta as { socketId?: unknown }).socketId;
			const socket = typeof socketId === "string" ? this.io?.of("/chat").sockets.get(socketId) : undefined;
			if (!socket || (socket.data.user as { id?: number } | undefined)?.id !== me.id) {
				throw validationError("Presence subscriptions are made from a /chat socket", [{ field: "socket", type: "socket", message: "Send it on a connected /chat socket" }]);
			}
			return socket;
		},
	},

	created(this: GatewayPresenceThis) {
		this.presenceLocal = new LocalPresence();
		this.presenceSubscribers = new Map();
		this.presenceFlushTimer = null;
		this.presenceSweepTimer = null;
		this.presenceConnectedOnce = false;
	},

	started(this: GatewayPresenceThis) {
		this.presenceConnectedOnce = !this.broker.transit || this.broker.transit.connected;
		this.presenceSweepTimer = setInterval(() => this.presenceSweep(), sweepEveryMs(config.presenceAwaySeconds * 1000));
		this.presenceSweepTimer.unref();
	},

	stopped(this: GatewayPresenceThis) {
		if (this.presenceSweepTimer) clearInterval(this.presenceSweepTimer);
		this.presenceSweepTimer = null;
		// Leaving: the users nodes hear of the sockets closed on the way out; the rest goes with this node.
		this.presenceFlush();
	},
} as unknown as Partial<ServiceSchema>;
