/**
 * What crosses a service boundary, typed once: the durable channels' payloads, the broadcast
 * events' payloads, and the params and results of the internal actions one service calls on
 * another. Producers and consumers both use these types (the handlers declare their results with
 * ActionResult, the callers go through callAction), so a change on one side that the other does
 * not follow fails the typecheck instead of a request.
 */
import type { CallingOptions } from "moleculer";
import type { ConversationMeta, MemberMeta } from "./chat";
import { EVENTS } from "./constants";
import { CHANNELS } from "./durable-events";
import type { SessionRevocation } from "./session-revocations";

// ---- durable channels (lib/durable-events.ts) ----

/** `mention`: the message names the recipient; it replaces `message` and reaches a muted conversation too. */
export type NotificationKind = "message" | "message_request" | "mention";

export interface MessageCreatedEvent {
	eventId: string;
	conversationId: string;
	conversationType: "private" | "group";
	conversationName: string | null;
	senderId: number;
	senderName: string;
	senderAvatar: string | null;
	content: string;
	messageType: string;
	recipients: { userId: number; type: NotificationKind }[];
}

export interface GroupInviteEvent {
	eventId: string;
	conversationId: string;
	conversationName: string | null;
	inviterId: number;
	inviterName: string;
	userIds: number[];
}

export interface MessageDeletedEvent {
	eventId: string;
	messageId: string;
}

export interface SystemBroadcastEvent {
	eventId: string;
	title: string;
	content: string;
	senderId: number;
	userIds?: number[];
}

export interface ChannelPayloads {
	[CHANNELS.messageCreated]: MessageCreatedEvent;
	[CHANNELS.groupInviteCreated]: GroupInviteEvent;
	[CHANNELS.messageDeleted]: MessageDeletedEvent;
	[CHANNELS.systemBroadcast]: SystemBroadcastEvent;
}

// ---- broadcast events (lib/constants.ts EVENTS) ----

export interface BroadcastPayloads {
	[EVENTS.userUpdated]: { userId: number };
	[EVENTS.userDeleted]: { userId: number };
	[EVENTS.sessionsRevoked]: SessionRevocation;
}

// ---- internal actions: one service calling another ----

/** Who a message notifies, by the conversation's settings now (null: no such conversation). */
export type NotificationTargets = {
	conversationType: "private" | "group";
	conversationName: string | null;
	recipients: { userId: number; type: NotificationKind }[];
} | null;

/** A user as the users service presents it to other services (no viewer: no email). */
export interface ResolvedUser {
	id: number;
	username: string;
	avatar_url: string | null;
}

export interface ActionContracts {
	"users.resolve": { params: { ids: number[] }; result: ResolvedUser[] };
	"users.ids": { params: { afterId?: number; limit?: number }; result: number[] };
	"users.count": { params: Record<string, never>; result: number };
	"users.isAdmin": { params: { userId: number }; result: boolean };
	"users.revocations": { params: Record<string, never>; result: SessionRevocation[] };
	"files.saveBase64": { params: { fileName: string; mimeType?: string; base64: string; onlyImages?: boolean }; result: { url: string; fileId: string } };
	"files.verifyAttachments": { params: { refs: string[]; ownerId: number }; result: { url: string; fileType: string }[] };
	"files.release": { params: { fileIds: string[] }; result: unknown };
	"conversations.authorizeSend": {
		params: { conversationId: string; senderId: number };
		result: { conversation: ConversationMeta["conv"]; blockedBy: number[]; muted: number[] };
	};
	"conversations.access": { params: { conversationId: string; userId: number }; result: { conv: ConversationMeta["conv"]; membership: MemberMeta } };
	"conversations.idsOf": { params: { userId: number }; result: { conversationId: string; clearedSeq: number }[] };
	"conversations.participantsOf": { params: { conversationId: string }; result: number[] };
	"conversations.audience": { params: { conversationId: string; userId: number; either: boolean }; result: number[] };
	"conversations.blockRelations": { params: { userId: number; others: number[] }; result: number[] };
	"conversations.notificationTargets": { params: { conversationId: string; senderId: number; mentions?: number[] }; result: NotificationTargets };
	/** A message's mentions changed (edited, deleted): the members' unread mentions follow. */
	"conversations.setMentions": { params: { conversationId: string; seq: number; senderId: number; mentions: number[] }; result: boolean };
	/** The users `userId` has an accepted private chat with (they get its presence without subscribing). */
	"conversations.privatePartners": { params: { userId: number }; result: number[] };
	/** A gateway node's users with a /chat socket on it (lib/socket-directory.ts). */
	"api.socketUsers": { params: Record<string, never>; result: number[] };
	/** Ends a socket on that gateway node because the user opened too many (lib/socket-quota.ts); false: already gone. */
	"api.endSocket": { params: { namespace: string; socketId: string }; result: boolean };
}

export type ActionName = keyof ActionContracts;
export type ActionParams<A extends ActionName> = ActionContracts[A]["params"];
export type ActionResult<A extends ActionName> = ActionContracts[A]["result"];

/** A broker or a context: both call actions. */
interface Caller {
	call(action: string, params?: unknown, opts?: CallingOptions): Promise<unknown>;
}

/** Calls an internal action with its declared params, answering its declared result. */
export function callAction<A extends ActionName>(caller: Caller, action: A, params: ActionParams<A>, opts?: CallingOptions): Promise<ActionResult<A>> {
	return caller.call(action, params, opts) as Promise<ActionResult<A>>;
}

/** A broker or a context: both broadcast events. */
interface Broadcaster {
	broadcast(event: string, payload?: unknown, groups?: string | string[]): Promise<void>;
}

/** Broadcasts an event with its declared payload, to every node of `groups` (every service when omitted). */
export function broadcastEvent<E extends keyof BroadcastPayloads>(caller: Broadcaster, event: E, payload: BroadcastPayloads[E], groups?: string | string[]): Promise<void> {
	return caller.broadcast(event, payload, groups);
}
