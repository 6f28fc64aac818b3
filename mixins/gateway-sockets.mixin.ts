/**
 * The gateway's Socket.IO side (moleculer-io on the gateway's HTTP server): the namespaces /chat
 * and /notifications, each of their events a call of the action it names; socket
 * authentication and sessions (SocketSessionsMixin); live pushes from any service to this node's
 * sockets; the socket directory's announcements (lib/socket-directory.ts). Presence (each user's
 * /chat sockets and activity here, and the sockets' presence subscriptions) is GatewayPresenceMixin's.
 *
 * Nothing else is reachable over Socket.IO: moleculer-io's default namespace "/" (whose `call`
 * event reaches any published action) is refused, and its own actions are for this node only.
 */
import crypto from "node:crypto";
import type { Context, Service, ServiceSchema, ServiceSettingSchema } from "moleculer";
import SocketIOService from "moleculer-io";
import type { Socket } from "socket.io";
import { config } from "../lib/config";
import type { SocketNamespace } from "../lib/api-declarations";
import type { ActionResult } from "../lib/contracts";
import { rateLimited, toEnvelope, validationError } from "../lib/errors";
import { countMetric, observeMetric } from "../lib/metrics";
import { type Limiter, createLimiter } from "../lib/rate-limiter";
import { DirectoryAnnouncer } from "../lib/socket-directory";
import { type AccessSession, type AuthUser, extractBearer } from "../lib/tokens";
import { type PushItem, type RoomsChange, SOCKET_PUSH_EVENT, SOCKET_ROOMS_EVENT } from "./push.mixin";
import { GatewayPresenceMixin, type GatewayPresenceThis } from "./gateway-presence.mixin";
import type { DeclaredSocketEvent, GatewayRoutesThis } from "./gateway-routes.mixin";
import { SocketSessionsMixin, type SocketSessionsThis } from "./socket-sessions.mixin";

const MiB = 1024 * 1024;
/** Request headers a browser client on another origin may send (REST and Socket.IO alike). */
export const ALLOWED_HEADERS = ["Authorization", "Content-Type", "X-Trace-Id", "X-Refresh-Transport"];

export interface GatewaySocketsThis extends Service, SocketSessionsThis, GatewayPresenceThis, Pick<GatewayRoutesThis, "socketEvents"> {
	/** Open sockets (both namespaces) per user on this node, for the socket directory. */
	socketCount: Map<number, number>;
	announcer: DirectoryAnnouncer;
	/** Users whose first socket here is being announced, and that announcement. */
	joining: Map<number, Promise<void>>;
	deliverItems(items: PushItem[]): void;
	socketLimiter: Limiter;
	socketOnError(err: unknown, respond: (ack: unknown) => void): void;
}

type Ack = (response: unknown) => void;

/**
 * The envelope of every client event: an ack is always called; the payload is an object; the
 * socket's login still holds; the user's event budget on this node (all its sockets) allows it.
 */
async function handleSocketEvent(
	svc: GatewaySocketsThis,
	socket: Socket,
	args: unknown[],
	run: (payload: Record<string, unknown>, user: AuthUser) => Promise<unknown>,
): Promise<void> {
	const ack: Ack = typeof args[args.length - 1] === "function" ? (args.pop() as Ack) : () => undefined;
	try {
		const payload = args[0] ?? {};
		if (typeof payload !== "object" || payload === null || Array.isArray(payload)) {
			throw validationError("The payload must be an object", [{ field: "payload", type: "object", message: "Send an object" }]);
		}
		const user = svc.checkSocketSession(socket);
		const limit = await svc.socketLimiter.take(`u:${user.id}`);
		if (!limit.ok) {
			countMetric(svc.broker, "parley_rate_limit_rejections_total", 1, { limit: "socket" });
			throw rateLimited(limit.retryAfter);
		}
		ack(await run(payload as Record<string, unknown>, user));
	} catch (err) {
		svc.socketOnError(err, ack);
	}
}

/** `auth:refresh { token }` on both namespaces: the gateway's own, it reaches no action. */
function authRefresh(this: Socket, ...args: unknown[]): Promise<void> {
	const svc = (this as Socket & { $service: GatewaySocketsThis }).$service;
	return handleSocketEvent(svc, this, args, async payload => ({ ok: true, data: svc.refreshSocketSession(this, payload) }));
}

/** A declared event: call its action with the socket's user, answer the ack as the declaration says. */
function callDeclared(svc: GatewaySocketsThis, socket: Socket, spec: DeclaredSocketEvent, args: unknown[]): Promise<void> {
	return handleSocketEvent(svc, socket, args, async (payload, user) => {
		// A client's event is activity (presence: not away). auth:refresh is not: it is the client's timer, not its user.
		svc.presenceTouch(user.id);
		const traceId = crypto.randomUUID();
		// The gateway's own actions (presence subscriptions) are about this socket: they run on this node.
		const opts = spec.action.startsWith(`${svc.name}.`) ? { nodeID: svc.broker.nodeID } : {};
		const data = (await svc.broker.call(spec.action, payload, { meta: { user, socketId: socket.id, traceId }, requestID: traceId, ...opts })) as { room?: string } | null;
		if (spec.room && data?.room) {
			if (spec.room === "join") await socket.join(data.room);
			else await socket.leave(data.room);
		}
		if (spec.reply) socket.emit(spec.reply, data);
		return spec.ack === "none" ? { ok: true } : { ok: true, data };
	});
}

const SOCKET_NAMESPACES: SocketNamespace[] = ["/chat", "/notifications"];

export const GatewaySocketsMixin = {
	mixins: [SocketIOService as unknown as Partial<ServiceSchema>, SocketSessionsMixin, GatewayPresenceMixin],

	settings: {
		// Socket.IO: websocket alone works; frames up to 2 MiB.
		io: {
			options: {
				maxHttpBufferSize: 2 * MiB,
				cors: { origin: config.corsOrigins, credentials: true, allowedHeaders: ALLOWED_HEADERS },
			},
			namespaces: {
				// moleculer-io's default "/" namespace with its `call` event reaches any published
				// action: it is not created here, and connections to it are refused in started().
				"/": { createNamespace: false },
				// The other events are the actions' declarations (GatewayRoutesMixin), looked up as they come.
				"/chat": { authorization: true, events: { "auth:refresh": authRefresh } },
				"/notifications": { authorization: true, events: { "auth:refresh": authRefresh } },
			},
		},
	},

	actions: {
		/** The users with a socket on this node: a pushing node's directory pulls it (other nodes only, never a client). */
		socketUsers: {
			visibility: "public",
			handler(this: GatewaySocketsThis): ActionResult<"api.socketUsers"> {
				return [...this.socketCount.keys()];
			},
		},
		// moleculer-io's own actions: for this node's code (and the REPL), never for another node
		// or a socket. broadcast would let a caller forge events on anyone's sockets.
		broadcast: { visibility: "protected" },
		getClients: { visibility: "protected" },
	},

	events: {
		/** Live fan-out from any service, on every api node, to this node's sockets. */
		[SOCKET_PUSH_EVENT](this: GatewaySocketsThis, ctx: Context<{ items: PushItem[] }>) {
			this.deliverItems(ctx.params.items);
		},
		[SOCKET_ROOMS_EVENT](this: GatewaySocketsThis, ctx: Context<RoomsChange>) {
			if (!this.io) return;
			this.io.of(ctx.params.namespace ?? "/chat").in(ctx.params.rooms).socketsLeave(ctx.params.leave);
		},
	},

	methods: {
		deliverItems(this: GatewaySocketsThis, items: PushItem[]) {
			if (!this.io) return;
			for (const item of items) {
				const nsp = this.io.of(item.namespace ?? "/chat");
				// Socket.IO encodes a packet before it looks for sockets: a push for rooms with no socket
				// on this node stops here.
				const rooms = nsp.adapter.rooms;
				if (!item.rooms.some(room => rooms.has(room))) continue;
				let target = nsp.to(item.rooms);
				if (item.except) target = target.except(item.except);
				target.emit(item.event, item.payload);
				if (item.event === "message:created" && this.broker.isMetricsEnabled()) {
					// The sockets reached (each socket once, whatever rooms it is in; `except` is not used here).
					const reached = new Set<string>();
					for (const room of item.rooms) for (const id of rooms.get(room) ?? []) reached.add(id);
					countMetric(this.broker, "parley_messages_delivered_total", reached.size);
					const createdAt = Date.parse(item.payload.created_at ?? "");
					if (Number.isFinite(createdAt)) observeMetric(this.broker, "parley_message_send_to_deliver_seconds", Math.max(0, Date.now() - createdAt) / 1000);
				}
			}
		},

		/** At connect: a valid access token of a login that has not ended, or "Unauthorized". */
		async socketAuthorize(this: GatewaySocketsThis, socket: Socket): Promise<AccessSession> {
			const auth = socket.handshake.auth as { token?: unknown } | undefined;
			const token = extractBearer(auth?.token) ?? extractBearer(socket.handshake.headers.authorization);
			const session = this.verifySession(token);
			if (!session) throw new Error("Unauthorized");
			// Counted from now (this socket connects once authorized); its first socket here is
			// announced to every pushing node before the connection completes, so no push misses it.
			const userId = session.user.id;
			const before = this.socketCount.get(userId) ?? 0;
			this.socketCount.set(userId, before + 1);
			socket.once("disconnect", () => {
				const left = (this.socketCount.get(userId) ?? 1) - 1;
				if (left > 0) return void this.socketCount.set(userId, left);
				this.socketCount.delete(userId);
				this.announcer.leave(userId);
			});
			// A second socket waits for the first one's announcement too, if it is still on its way.
			let joined = this.joining.get(userId);
			if (before === 0) {
				joined = this.announcer
					.join(userId)
					.catch(err => this.logger.warn("Socket directory announcement failed", (err as Error).message))
					.finally(() => this.joining.delete(userId));
				this.joining.set(userId, joined);
			}
			if (joined) await joined;
			return session;
		},
		socketSaveUser(socket: Socket, session: AccessSession | null | undefined) {
			// Per socket, not per connection: /chat and /notifications share one engine connection.
			if (!session) return;
			socket.data.session = session;
			socket.data.user = session.user;
		},
		socketGetMeta(socket: Socket) {
			return { user: socket.data.user, $socketId: socket.id, traceId: crypto.randomUUID() };
		},
		socketOnError(err: unknown, respond: (ack: unknown) => void) {
			const envelope = toEnvelope(err);
			const details = envelope.retryAfter ? { retryAfter: envelope.retryAfter } : envelope.details;
			respond({ ok: false, error: { code: envelope.code, message: envelope.message, ...(details !== undefined ? { details } : {}) } });
		},
	},

	created(this: GatewaySocketsThis) {
		// Socket events count per user across all its sockets: on every gateway together with REDIS_URL.
		this.socketLimiter = createLimiter("socket", config.rateLimit, config.redisUrl, config.namespace);
		this.socketCount = new Map();
		this.joining = new Map();
		this.announcer = new DirectoryAnnouncer(this.broker, userId => this.socketCount.has(userId));
	},

	started(this: GatewaySocketsThis) {
		// Socket.IO always has "/": nobody may connect to it (unknown namespaces are refused by Socket.IO).
		this.io.of("/").use((_socket, next) => next(new Error("Invalid namespace")));
		for (const nsp of SOCKET_NAMESPACES) {
			this.io.of(nsp).on("connection", socket => {
				const user = socket.data.user as AuthUser | undefined;
				if (!user) return;
				socket.onAny((event: unknown, ...args: unknown[]) => {
					if (event === "auth:refresh") return;
					const declared = typeof event === "string" ? this.socketEvents[nsp].get(event) : undefined;
					if (declared) return void callDeclared(this, socket, declared, args);
					// An event this namespace does not have still gets its ack, so a client never hangs.
					// Counted like any event: a flood of made-up events is limited too.
					const ack = args[args.length - 1];
					void Promise.resolve(this.socketLimiter.take(`u:${user.id}`)).then(limit => {
						if (typeof ack !== "function") return;
						if (!limit.ok) {
							countMetric(this.broker, "parley_rate_limit_rejections_total", 1, { limit: "socket" });
							this.socketOnError(rateLimited(limit.retryAfter), ack as Ack);
						}
						else ack({ ok: false, error: { code: "NOT_FOUND", message: `No such event on ${nsp}` } });
					});
				});
				countMetric(this.broker, "parley_sockets_open", 1, { namespace: nsp });
				socket.once("disconnect", () => countMetric(this.broker, "parley_sockets_open", -1, { namespace: nsp }));
				// Every event for a user goes to this room, so each of its devices gets it.
				socket.join(`user:${user.id}`);
				// Ended at token expiry, when the login ends, and when the user opens too many.
				this.trackSocket(nsp, socket);
				if (!socket.connected) return;
				if (nsp === "/chat") this.presenceSocketOpened(user.id, socket);
				if (nsp === "/notifications") {
					// The badge is right from the first moment.
					this.broker
						.call("notifications.unreadCount", {}, { meta: { user } })
						.then(res => socket.emit("notification:count", res))
						.catch(err => this.logger.warn("notification:count on connect failed", (err as Error).message));
				}
			});
		}
	},

	stopped(this: GatewaySocketsThis) {
		this.socketLimiter.stop();
	},
} as Partial<ServiceSchema<ServiceSettingSchema, GatewaySocketsThis>> as Partial<ServiceSchema>;
