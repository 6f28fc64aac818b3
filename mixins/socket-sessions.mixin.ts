/**
 * Socket sessions on a gateway node: a socket lives no longer than its login.
 *
 * - A socket is ended when its access token expires, unless `auth:refresh` gave it a newer one.
 * - When a login ends early (logout, password or role change, deleted account, a spent refresh
 *   token presented again), the users service broadcasts a SessionRevocation to every gateway
 *   node; each one remembers it (so the token is refused on REST and at connect) and ends every
 *   socket of that user at once.
 * - A user holds at most MAX_SOCKETS_PER_USER sockets per namespace; the oldest goes. Each node
 *   caps its own; with REDIS_URL the cap holds across every gateway (lib/socket-quota.ts), and a
 *   socket on another node is ended by that node (`api.endSocket`).
 *
 * Before a socket is ended it gets `session:ended { reason }`, so a client can tell "log in
 * again" from a network failure.
 */
import type { Context, Service, ServiceSchema, ServiceSettingSchema } from "moleculer";
import type { Socket } from "socket.io";
import { EVENTS } from "../lib/constants";
import { badRequest, forbidden, unauthorized, validationError } from "../lib/errors";
import { config } from "../lib/config";
import { type ActionResult, type BroadcastPayloads, callAction } from "../lib/contracts";
import { acquireSharedRedis, releaseSharedRedis } from "../lib/redis-options";
import { type SocketRef, SocketQuota } from "../lib/socket-quota";
import { RevocationList, type RevocationReason } from "../lib/session-revocations";
import { type AccessSession, type AuthUser, extractBearer, verifyAccessSession } from "../lib/tokens";

export const MAX_SOCKETS_PER_USER = 20;
export const SESSION_ENDED_EVENT = "session:ended";
export type SessionEndReason = RevocationReason | "expired" | "too_many_sockets";

/** setTimeout takes at most 2^31-1 ms; a longer-lived token is checked again then. */
const MAX_TIMER_MS = 2 ** 31 - 1;
const SYNC_RETRY_MS = 2_000;
const SYNC_INTERVAL_MS = 60_000;

interface SessionSocketData {
	user?: AuthUser;
	session?: AccessSession;
	expiryTimer?: NodeJS.Timeout;
}

export interface SocketSessionsThis extends Service {
	revocations: RevocationList;
	revocationsSynced: boolean;
	revocationSyncTimer: NodeJS.Timeout | null;
	/** namespace → user id → that user's sockets here, oldest first. */
	socketsByUser: Map<string, Map<number, Set<Socket>>>;
	/** The cap across gateways, with REDIS_URL; null: this node's cap alone. */
	socketQuota: SocketQuota | null;
	io: import("socket.io").Server;
	applySharedSocketCap(nsp: string, userId: number, socket: Socket): void;
	verifySession(token: string | null): AccessSession | null;
	trackSocket(nsp: string, socket: Socket): void;
	scheduleExpiry(socket: Socket): void;
	checkSocketSession(socket: Socket): AuthUser;
	endSocket(socket: Socket, reason: SessionEndReason): void;
	endUserSockets(userId: number, reason: SessionEndReason): void;
	refreshSocketSession(socket: Socket, payload: unknown): { expiresAt: string };
	syncRevocations(): Promise<void>;
	scheduleRevocationSync(): void;
}

const dataOf = (socket: Socket) => socket.data as SessionSocketData;

const mixin: Partial<ServiceSchema<ServiceSettingSchema, SocketSessionsThis>> = {
	actions: {
		/** Another gateway's shared socket cap ends one of this node's sockets (nodes only, never a client). */
		endSocket: {
			visibility: "public",
			params: { namespace: { type: "enum", values: ["/chat", "/notifications"] }, socketId: { type: "string", max: 64 } },
			handler(this: SocketSessionsThis, ctx: Context<{ namespace: string; socketId: string }>): ActionResult<"api.endSocket"> {
				const socket = this.io?.of(ctx.params.namespace).sockets.get(ctx.params.socketId);
				if (!socket) return false;
				this.endSocket(socket, "too_many_sockets");
				return true;
			},
		},
	},

	events: {
		/** Sent by the users service to every gateway node when a login ends early. */
		[EVENTS.sessionsRevoked](this: SocketSessionsThis, ctx: Context<BroadcastPayloads[typeof EVENTS.sessionsRevoked]>) {
			this.revocations.add(ctx.params);
			this.endUserSockets(ctx.params.userId, ctx.params.reason);
		},
	},

	methods: {
		/** A valid access token whose login has not ended, or null. */
		verifySession(this: SocketSessionsThis, token: string | null) {
			const session = verifyAccessSession(token);
			if (!session || this.revocations.isRevoked(session)) return null;
			return session;
		},

		trackSocket(this: SocketSessionsThis, nsp: string, socket: Socket) {
			const user = dataOf(socket).user;
			if (!user) return;
			let byUser = this.socketsByUser.get(nsp);
			if (!byUser) this.socketsByUser.set(nsp, (byUser = new Map()));
			let mine = byUser.get(user.id);
			if (!mine) byUser.set(user.id, (mine = new Set()));
			mine.add(socket);
			const own = mine;
			const owners = byUser;
			socket.once("disconnect", () => {
				clearTimeout(dataOf(socket).expiryTimer);
				own.delete(socket);
				if (own.size === 0 && owners.get(user.id) === own) owners.delete(user.id);
			});
			this.scheduleExpiry(socket);
			// Sets iterate in insertion order: the first ones are the oldest.
			for (const old of own) {
				if (own.size <= MAX_SOCKETS_PER_USER) break;
				own.delete(old);
				this.endSocket(old, "too_many_sockets");
			}
			if (this.socketQuota && socket.connected) this.applySharedSocketCap(nsp, user.id, socket);
		},

		/** Counts the socket in Redis and ends the user's oldest sockets beyond the cap, on whatever gateway. */
		applySharedSocketCap(this: SocketSessionsThis, nsp: string, userId: number, socket: Socket) {
			const quota = this.socketQuota!;
			const ref: SocketRef = { nodeID: this.broker.nodeID, socketId: socket.id };
			const nodes = (this.broker.registry as unknown as { nodes: { get(id: string): { available: boolean } | undefined } }).nodes;
			const isLive = (r: SocketRef) => (r.nodeID === this.broker.nodeID ? this.io.of(nsp).sockets.has(r.socketId) : nodes.get(r.nodeID)?.available === true);
			const warn = (err: unknown) => this.logger.warn("Shared socket cap: Redis did not answer; this node's cap alone holds", (err as Error).message);
			socket.once("disconnect", () => void quota.remove(nsp, userId, ref).catch(warn));
			quota
				.add(nsp, userId, ref, isLive)
				.then(evicted => {
					for (const victim of evicted) {
						if (victim.nodeID === this.broker.nodeID) {
							const local = this.io.of(nsp).sockets.get(victim.socketId);
							if (local) this.endSocket(local, "too_many_sockets");
						} else {
							callAction(this.broker, "api.endSocket", { namespace: nsp, socketId: victim.socketId }, { nodeID: victim.nodeID }).catch(err =>
								this.logger.warn(`Could not end socket ${victim.socketId} on ${victim.nodeID}`, (err as Error).message),
							);
						}
					}
				})
				.catch(warn);
		},

		scheduleExpiry(this: SocketSessionsThis, socket: Socket) {
			const data = dataOf(socket);
			clearTimeout(data.expiryTimer);
			if (!data.session) return;
			const left = data.session.exp * 1000 - Date.now();
			if (left <= 0) return this.endSocket(socket, "expired");
			data.expiryTimer = setTimeout(() => {
				if (data.session && data.session.exp * 1000 <= Date.now()) this.endSocket(socket, "expired");
				else this.scheduleExpiry(socket);
			}, Math.min(left + 10, MAX_TIMER_MS));
			data.expiryTimer.unref();
		},

		/** Before each event: the socket's login still holds. Ends the socket and throws if not. */
		checkSocketSession(this: SocketSessionsThis, socket: Socket) {
			const { user, session } = dataOf(socket);
			if (!user || !session) throw unauthorized();
			if (session.exp * 1000 <= Date.now()) {
				this.endSocket(socket, "expired");
				throw unauthorized("The access token expired");
			}
			if (this.revocations.isRevoked(session)) {
				this.endSocket(socket, "logout");
				throw unauthorized("This session has ended");
			}
			return user;
		},

		endSocket(this: SocketSessionsThis, socket: Socket, reason: SessionEndReason) {
			clearTimeout(dataOf(socket).expiryTimer);
			if (!socket.connected) return;
			socket.emit(SESSION_ENDED_EVENT, { reason });
			// This namespace only: the client's other namespace is ended by its own call.
			socket.disconnect();
		},

		endUserSockets(this: SocketSessionsThis, userId: number, reason: SessionEndReason) {
			for (const byUser of this.socketsByUser.values()) {
				for (const socket of [...(byUser.get(userId) ?? [])]) this.endSocket(socket, reason);
			}
		},

		/** `auth:refresh { token }`: a newer access token of the same user extends the socket's life. */
		refreshSocketSession(this: SocketSessionsThis, socket: Socket, payload: unknown) {
			const current = dataOf(socket).session;
			if (!current) throw unauthorized();
			const raw = (payload as { token?: unknown } | null)?.token;
			if (typeof raw !== "string" || raw.length === 0 || raw.length > 8192) {
				throw validationError("token is required", [{ field: "token", type: "string", message: "Send the new access token" }]);
			}
			const next = verifyAccessSession(extractBearer(raw));
			if (!next) throw unauthorized("Invalid or expired token");
			if (next.user.id !== current.user.id) throw forbidden("The token belongs to another user");
			if (this.revocations.isRevoked(next)) throw unauthorized("This session has ended");
			if (next.exp < current.exp) throw badRequest("Send a newer token than the one this socket has");
			socket.data.session = next;
			socket.data.user = next.user;
			this.scheduleExpiry(socket);
			return { expiresAt: new Date(next.exp * 1000).toISOString() };
		},

		/**
		 * The revocations still in force, from the users service: at start (a node that was down
		 * missed the broadcasts) and every minute (a broadcast lost while RabbitMQ was away).
		 * Sockets whose login turns out to have ended are ended.
		 */
		async syncRevocations(this: SocketSessionsThis) {
			try {
				const list = await callAction(this.broker, "users.revocations", {});
				for (const r of list) this.revocations.add(r);
				this.revocations.sweep();
				this.revocationsSynced = true;
			} catch (err) {
				if (this.revocationsSynced) this.logger.warn("Could not refresh the session revocations", (err as Error).message);
				return;
			}
			for (const byUser of this.socketsByUser.values()) {
				for (const sockets of byUser.values()) {
					for (const socket of [...sockets]) {
						const session = dataOf(socket).session;
						if (session && this.revocations.isRevoked(session)) this.endSocket(socket, "logout");
					}
				}
			}
		},

		scheduleRevocationSync(this: SocketSessionsThis) {
			this.revocationSyncTimer = setTimeout(
				() => {
					void this.syncRevocations().finally(() => {
						if (this.revocationSyncTimer) this.scheduleRevocationSync();
					});
				},
				this.revocationsSynced ? SYNC_INTERVAL_MS : SYNC_RETRY_MS,
			);
			this.revocationSyncTimer.unref();
		},
	},

	created(this: SocketSessionsThis) {
		this.revocations = new RevocationList();
		this.revocationsSynced = false;
		this.revocationSyncTimer = null;
		this.socketsByUser = new Map();
		this.socketQuota = config.redisUrl ? new SocketQuota(acquireSharedRedis(config.redisUrl), `parley:${config.namespace || "default"}`, MAX_SOCKETS_PER_USER) : null;
	},

	started(this: SocketSessionsThis) {
		void this.syncRevocations();
		this.scheduleRevocationSync();
	},

	stopped(this: SocketSessionsThis) {
		if (this.revocationSyncTimer) clearTimeout(this.revocationSyncTimer);
		this.revocationSyncTimer = null;
		if (this.socketQuota) releaseSharedRedis();
		this.socketQuota = null;
	},
};

export const SocketSessionsMixin = mixin as Partial<ServiceSchema>;
