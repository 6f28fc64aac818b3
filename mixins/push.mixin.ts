/**
 * Live fan-out to sockets: the `socket.push` event, applied by each gateway (`api` node) to its
 * own sockets. It goes only to the gateways that hold sockets of its users (lib/socket-directory.ts);
 * with one node it is a plain broadcast. Emitting to several rooms at once reaches each socket
 * once, even if it is in more than one of them.
 */
import type { Context, Service, ServiceSchema } from "moleculer";
import { broadcastToNodes, type DirectoryChange, directoryOf } from "../lib/socket-directory";
import type { ChatServerPayloads, NotificationServerPayloads } from "../lib/socket-events";

export const SOCKET_PUSH_EVENT = "socket.push";
export const SOCKET_ROOMS_EVENT = "socket.rooms";

/** One event for the sockets in some rooms, its payload typed by the event (lib/socket-events.ts). */
type PushItemOf<Payloads, Namespace> = {
	[E in keyof Payloads]: Namespace & {
		rooms: string[];
		event: E;
		payload: Payloads[E];
		/** Rooms that must not get it: a socket id (the sender of a typing event), user:<id> rooms (blocks). */
		except?: string | string[];
	};
}[keyof Payloads];

/** A push to /chat (the default namespace) or to /notifications (which must be named). */
export type PushItem = PushItemOf<ChatServerPayloads, { namespace?: "/chat" }> | PushItemOf<NotificationServerPayloads, { namespace: "/notifications" }>;

export interface RoomsChange {
	namespace?: string;
	/** Sockets in these rooms (e.g. user:7) ... */
	rooms: string[];
	/** ... leave these rooms (e.g. conversation:abc). */
	leave: string[];
}

export const userRoom = (userId: number) => `user:${userId}`;
export const conversationRoom = (conversationId: string) => `conversation:${conversationId}`;

export interface PushThis extends Service {
	push(ctx: Context | null, items: PushItem[]): Promise<void>;
	leaveRooms(ctx: Context | null, change: RoomsChange): Promise<void>;
}

export const PushMixin: Partial<ServiceSchema> = {
	actions: {
		/** A gateway's users that gained their first or lost their last socket there (lib/socket-directory.ts). */
		socketDirectory: {
			visibility: "public",
			params: {
				gateway: { type: "string", min: 1, max: 200 },
				joined: { type: "array", optional: true, items: "number" },
				left: { type: "array", optional: true, items: "number" },
				resync: { type: "boolean", optional: true },
			},
			handler(this: PushThis, ctx: Context<DirectoryChange>) {
				directoryOf(this.broker).apply(ctx.params);
				return true;
			},
		},
	},
	events: {
		"$node.connected"(this: PushThis, ctx: Context<{ node: { id: string } }>) {
			directoryOf(this.broker).forgetNode(ctx.params.node.id);
		},
		"$node.disconnected"(this: PushThis, ctx: Context<{ node: { id: string } }>) {
			directoryOf(this.broker).forgetNode(ctx.params.node.id);
		},
		"$services.changed"(this: PushThis) {
			directoryOf(this.broker).nodesChanged();
		},
	},
	methods: {
		async push(this: PushThis, ctx: Context | null, items: PushItem[]) {
			const live = items.filter(i => i.rooms.length > 0);
			if (live.length === 0) return;
			const plan = directoryOf(this.broker).plan(live);
			if (!plan) {
				// Only api nodes listen; the trace id travels with the context.
				if (ctx) await ctx.broadcast(SOCKET_PUSH_EVENT, { items: live }, ["api"]);
				else await this.broker.broadcast(SOCKET_PUSH_EVENT, { items: live }, ["api"]);
				return;
			}
			await Promise.all([...plan].map(([nodeID, forNode]) => broadcastToNodes(this.broker, new Set([nodeID]), SOCKET_PUSH_EVENT, { items: forNode }, ["api"], ctx)));
		},
		async leaveRooms(this: PushThis, ctx: Context | null, change: RoomsChange) {
			if (ctx) await ctx.broadcast(SOCKET_ROOMS_EVENT, change, ["api"]);
			else await this.broker.broadcast(SOCKET_ROOMS_EVENT, change, ["api"]);
		},
	},
};
