/**
 * Live fan-out to sockets. A Moleculer *broadcast* event that every `api` node receives and
 * applies to its own sockets, so a socket on any gateway node gets it (DESIGN.md). Emitting to
 * several rooms at once reaches each socket once, even if it is in more than one of them.
 */
import type { Context, Service, ServiceSchema } from "moleculer";

export const SOCKET_PUSH_EVENT = "socket.push";
export const SOCKET_ROOMS_EVENT = "socket.rooms";

export interface PushItem {
	/** Socket.IO namespace; default "/chat". */
	namespace?: string;
	rooms: string[];
	event: string;
	payload: unknown;
	/** Rooms that must not get it: a socket id (the sender of a typing event), user:<id> rooms (blocks). */
	except?: string | string[];
}

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
	methods: {
		async push(this: PushThis, ctx: Context | null, items: PushItem[]) {
			const live = items.filter(i => i.rooms.length > 0);
			if (live.length === 0) return;
			// Only api nodes listen; the trace id travels with the context.
			if (ctx) await ctx.broadcast(SOCKET_PUSH_EVENT, { items: live }, ["api"]);
			else await this.broker.broadcast(SOCKET_PUSH_EVENT, { items: live }, ["api"]);
		},
		async leaveRooms(this: PushThis, ctx: Context | null, change: RoomsChange) {
			if (ctx) await ctx.broadcast(SOCKET_ROOMS_EVENT, change, ["api"]);
			else await this.broker.broadcast(SOCKET_ROOMS_EVENT, change, ["api"]);
		},
	},
};
