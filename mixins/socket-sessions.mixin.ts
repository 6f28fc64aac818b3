/**
 * Socket sessions on a gateway node: a socket lives no longer than its login.
 *
 * - A socket is ended when its access token expires, unless `auth:refresh` gave it a newer one.
 * - When a login ends early (logout, password or role change, deleted account, a spent refresh
 *   token presented again), the users service broadcasts a SessionRevocation to every gateway
 *   node; each one remembers it (so the token is refused on REST and at connect) and ends every
 *   socket of that user at once.
 * - A user holds at most MAX_SOCKETS_PER_USER sockets per namespace on a node; the oldest goes.
 *
 * Before a socket is ended it gets `session:ended { reason }`, so a client can tell "log in
 * again" from a network failure.
 */
import type { Context, Service, ServiceSchema, ServiceSettingSchema } from "moleculer";
import type { Socket } from "socket.io";
import { EVENTS } from "../lib/constants";
import { badRequest, forbidden, unauthorized, validationError } from "../lib/errors";
import { type BroadcastPayloads, callAction } from "../lib/contracts";
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
	io: import("socket.io").Server;
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
	},

	started(this: SocketSessionsThis) {
		void this.syncRevocations();
		this.scheduleRevocationSync();
	},

	stopped(this: SocketSessionsThis) {
		if (this.revocationSyncTimer) clearTimeout(this.revocationSyncTimer);
		this.revocationSyncTimer = null;
	},
};

export const SocketSessionsMixin = mixin as Partial<ServiceSchema>;
