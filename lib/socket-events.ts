/**
 * The events the server sends to sockets, declared once: their payload types (Socket.IO's
 * `ServerToClientEvents` maps, used by push() and by the tests' clients) and their documentation
 * (the AsyncAPI document's server → client messages, made by lib/api-documents.ts). The keys of the
 * two are the same by construction: a new event needs both, or the typecheck fails.
 *
 * What the client sends is declared on the actions (`socket: { namespace, event }`), not here.
 */
import { type Obj, schema } from "./api-schemas";
import type { PresentedConversation, PresentedMessage } from "./chat";
import type { ReactionSummary } from "./reactions";

type ConversationEvent = { conversationId: string; conversation?: PresentedConversation };
type MemberEvent = { conversationId: string; userId: number };
export type PresenceStatus = "online" | "away" | "offline";
export type PresenceEntry = { userId: number; status: PresenceStatus; last_seen_at: string | null };

/** Socket.IO's typed map: event → listener. */
type Listeners<T> = { [E in keyof T]: (payload: T[E]) => void };

/** `/chat`, server → client: payload by event. */
export interface ChatServerPayloads {
	"message:created": PresentedMessage;
	"message:updated": PresentedMessage;
	"message:deleted": { messageId: string; conversationId: string };
	"message:read": { messageId: string; conversationId: string; userId: number; readAt: string };
	"message:status": { messageId: string; userId: number; status: "read" | "delivered"; timestamp: string };
	"conversation:created": ConversationEvent;
	"conversation:invited": ConversationEvent;
	"conversation:updated": ConversationEvent;
	"conversation:deleted": ConversationEvent;
	"members:added": MemberEvent;
	"members:removed": MemberEvent;
	"conversation:member-added": MemberEvent;
	"conversation:member-removed": MemberEvent;
	"conversation:moderator-updated": MemberEvent & { promoted: boolean };
	"request:accepted": { conversationId: string; acceptedBy: number };
	"request:declined": { conversationId: string; declinedBy: number };
	typing: { conversationId: string; userId: number; isTyping: boolean };
	"user:blocked": { targetUserId: number };
	"user:unblocked": { targetUserId: number };
	"session:ended": { reason: string };
	"message:reactions": { conversationId: string; messageId: string; reactions: ReactionSummary[] };
	"message:pinned": { conversationId: string; messageId: string; userId: number };
	"message:unpinned": { conversationId: string; messageId: string; userId: number };
	"presence:changed": PresenceEntry;
}

/** `/notifications`, server → client: payload by event. */
export interface NotificationServerPayloads {
	"notification:created": Record<string, unknown>;
	"notification:read": { notificationId: string; is_read: true };
	"notification:deleted": { notificationId: string };
	"notification:count": { count: number };
	pong: { timestamp: string };
	"session:ended": { reason: string };
}

/** The events whose payload is one conversation as its member sees it. */
export type ConversationEventName = "conversation:created" | "conversation:invited" | "conversation:updated" | "conversation:deleted";
/** The /chat events whose payload is exactly P (an alias event names the same payload twice). */
export type EventWithPayload<P> = {
	[E in keyof ChatServerPayloads]: [ChatServerPayloads[E]] extends [P] ? ([P] extends [ChatServerPayloads[E]] ? E : never) : never;
}[keyof ChatServerPayloads];

export type ChatServerToClientEvents = Listeners<ChatServerPayloads>;
export type NotificationServerToClientEvents = Listeners<NotificationServerPayloads>;


export interface ServerEventDoc {
	summary: string;
	payload: Obj;
}

const conversationEvent = (summary: string, conversation: "always" | "optional"): ServerEventDoc => ({
	summary,
	payload: {
		type: "object",
		required: conversation === "always" ? ["conversationId", "conversation"] : ["conversationId"],
		properties: { conversationId: { type: "string" }, conversation: schema("Conversation") },
	},
});
const memberEvent = (summary: string): ServerEventDoc => ({
	summary,
	payload: { type: "object", required: ["conversationId", "userId"], properties: { conversationId: { type: "string" }, userId: { type: "integer" } } },
});
const sessionEnded: ServerEventDoc = {
	summary: "The socket's login ended (logout, password or role change, deleted account, expiry, too many sockets); the server disconnects it next.",
	payload: { type: "object", required: ["reason"], properties: { reason: { type: "string", example: "logout" } } },
};
const pinEvent = (summary: string): ServerEventDoc => ({
	summary,
	payload: {
		type: "object",
		required: ["conversationId", "messageId", "userId"],
		properties: { conversationId: { type: "string" }, messageId: { type: "string" }, userId: { type: "integer", description: "Who pinned or unpinned it." } },
	},
});
const targetUser = { type: "object", required: ["targetUserId"], properties: { targetUserId: { type: "integer" } } };

export const CHAT_SERVER_EVENTS: Record<keyof ChatServerPayloads, ServerEventDoc> = {
	"message:created": { summary: "A new message, to every participant's devices (once per socket).", payload: schema("Message") },
	"message:updated": { summary: "A message was edited, to the participants.", payload: schema("Message") },
	"message:deleted": {
		summary: "A message was deleted, to the participants.",
		payload: { type: "object", required: ["messageId", "conversationId"], properties: { messageId: { type: "string" }, conversationId: { type: "string" } } },
	},
	"message:read": {
		summary: "A participant read up to this message.",
		payload: {
			type: "object",
			required: ["messageId", "conversationId", "userId", "readAt"],
			properties: { messageId: { type: "string" }, conversationId: { type: "string" }, userId: { type: "integer" }, readAt: { type: "string", format: "date-time" } },
		},
	},
	"message:status": {
		summary: "Alias of `message:read`, also sent for deliveries.",
		payload: {
			type: "object",
			required: ["messageId", "userId", "status", "timestamp"],
			properties: { messageId: { type: "string" }, userId: { type: "integer" }, status: { type: "string", enum: ["read", "delivered"] }, timestamp: { type: "string", format: "date-time" } },
		},
	},
	"conversation:created": conversationEvent("A conversation the user is in was created (each member gets it as it sees it).", "always"),
	"conversation:invited": conversationEvent("The user was added to a group.", "always"),
	"conversation:updated": conversationEvent("A conversation changed (name, avatar, members, request state).", "always"),
	"conversation:deleted": conversationEvent("A conversation was deleted (or hidden by the user on another device).", "optional"),
	"members:added": memberEvent("A member was added to a group, to the participants."),
	"members:removed": memberEvent("A member left or was removed, to the participants and the removed user."),
	"conversation:member-added": memberEvent("Alias of `members:added`."),
	"conversation:member-removed": memberEvent("Alias of `members:removed`."),
	"conversation:moderator-updated": {
		summary: "A member was promoted to or demoted from moderator.",
		payload: {
			type: "object",
			required: ["conversationId", "userId", "promoted"],
			properties: { conversationId: { type: "string" }, userId: { type: "integer" }, promoted: { type: "boolean" } },
		},
	},
	"request:accepted": {
		summary: "The other side accepted the user's message request.",
		payload: { type: "object", required: ["conversationId", "acceptedBy"], properties: { conversationId: { type: "string" }, acceptedBy: { type: "integer" } } },
	},
	"request:declined": {
		summary: "The other side declined the user's message request.",
		payload: { type: "object", required: ["conversationId", "declinedBy"], properties: { conversationId: { type: "string" }, declinedBy: { type: "integer" } } },
	},
	typing: {
		summary: "Someone is (or stopped) typing, to the other sockets in `conversation:<id>` (those that sent `conversation:join`).",
		payload: {
			type: "object",
			required: ["conversationId", "userId", "isTyping"],
			properties: { conversationId: { type: "string" }, userId: { type: "integer" }, isTyping: { type: "boolean" } },
		},
	},
	"user:blocked": { summary: "The user blocked someone (to all of the user's devices).", payload: targetUser },
	"user:unblocked": { summary: "The user unblocked someone (to all of the user's devices).", payload: targetUser },
	"session:ended": sessionEnded,
	"message:reactions": {
		summary: "A message's reactions changed, to the participants: the whole summary (without `me`: each client derives it from `user_ids`).",
		payload: {
			type: "object",
			required: ["conversationId", "messageId", "reactions"],
			properties: {
				conversationId: { type: "string" },
				messageId: { type: "string" },
				reactions: { type: "array", items: schema("ReactionSummary") },
			},
		},
	},
	"message:pinned": pinEvent("A message was pinned in the conversation, to the participants (a `message_pinned` system message follows)."),
	"message:unpinned": pinEvent("A message was unpinned, to the participants."),
	"presence:changed": {
		summary:
			"A user's presence changed: to every socket that subscribed to it (`presence:subscribe`) and to the user's private-chat partners, within 2 s, from any gateway node. " +
			"A user who blocked or is blocked by the receiver shows `offline` with no `last_seen_at`; `last_seen_at` is `null` when either side hides it.",
		payload: schema("Presence"),
	},
};

export const NOTIFICATION_SERVER_EVENTS: Record<keyof NotificationServerPayloads, ServerEventDoc> = {
	"notification:created": { summary: "A new notification, to every device of the user.", payload: schema("Notification") },
	"notification:read": {
		summary: "A notification was read (on any device).",
		payload: { type: "object", required: ["notificationId", "is_read"], properties: { notificationId: { type: "string" }, is_read: { type: "boolean", enum: [true] } } },
	},
	"notification:deleted": {
		summary: "A notification was deleted (by the user, or with the message it was about).",
		payload: { type: "object", required: ["notificationId"], properties: { notificationId: { type: "string" } } },
	},
	"notification:count": { summary: "The unread count: on connect, and after every change to it.", payload: schema("UnreadCount") },
	pong: { summary: "The answer to `notification:ping`, besides its ack.", payload: { type: "object", required: ["timestamp"], properties: { timestamp: { type: "string" } } } },
	"session:ended": sessionEnded,
};

/** Both namespaces' server events, for the documents and the tests. */
export const SERVER_EVENTS = { "/chat": CHAT_SERVER_EVENTS, "/notifications": NOTIFICATION_SERVER_EVENTS } as const;
